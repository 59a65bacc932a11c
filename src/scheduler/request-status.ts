// Where a request is in its life, ordered as in vLLM v1's RequestStatus: every status from FINISHED_STOPPED on
// is final, so "is it finished?" is one comparison and a new finish reason goes at the end.

export const RequestStatus = {
  /** In the FIFO queue, nothing computed yet. */
  WAITING: 0,
  /** Admitted: holds a KV cache; its prompt is being computed (maybe in chunks) or it is decoding. */
  RUNNING: 1,
  /** The engine ended it: end-of-sequence token or stop string. */
  FINISHED_STOPPED: 2,
  /** It generated its maxTokens. */
  FINISHED_LENGTH: 3,
  /** The client went away or cancelled it. */
  FINISHED_ABORTED: 4,
} as const;

export type RequestStatus = (typeof RequestStatus)[keyof typeof RequestStatus];

export type FinishedStatus =
  | typeof RequestStatus.FINISHED_STOPPED
  | typeof RequestStatus.FINISHED_LENGTH
  | typeof RequestStatus.FINISHED_ABORTED;

export function isFinished(status: RequestStatus): status is FinishedStatus {
  return status >= RequestStatus.FINISHED_STOPPED;
}
