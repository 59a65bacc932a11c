#!/bin/bash
# Alternating before (f44e9b0, /work/base) and after (/work/main) in one run.
for i in 1 2 3 4; do
  for side in base main; do
    (cd /work/$side && node dist/src/cli/main.js bench decode --runs 3 --tokens 128 2>&1 | grep '^{' > /tmp/onepath/decode-$side-$i.json)
  done
done
for i in 1 2; do
  for side in base main; do
    (cd /work/$side && node dist/src/cli/main.js bench batch --concurrency 1,4,16 2>&1 > /tmp/onepath/batch-$side-$i.txt)
  done
done
echo done
