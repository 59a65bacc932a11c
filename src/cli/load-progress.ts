// A progress bar on stderr while a model's weights load (cli-progress draws nothing when stderr is not a
// terminal, so logs and tests stay clean).
import cliProgress from 'cli-progress';
import type { LoadStage } from '../engine/moe-model.js';

export interface LoadProgressBar {
  update(stage: LoadStage, done: number, total: number): void;
  stop(): void;
}

export function loadProgressBar(stream: NodeJS.WriteStream = process.stderr): LoadProgressBar {
  const bar = new cliProgress.SingleBar({ stream, format: 'loading {stage} [{bar}] {value}/{total}', hideCursor: true, clearOnComplete: false }, cliProgress.Presets.shades_classic);
  let current: LoadStage | null = null;
  return {
    update(stage, done, total) {
      if (stage !== current) {
        if (current !== null) bar.stop();
        bar.start(total, done, { stage });
        current = stage;
      } else {
        bar.update(done);
      }
    },
    stop: () => bar.stop(),
  };
}
