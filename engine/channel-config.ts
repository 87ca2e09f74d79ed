/**
 * What the main thread and a channel worker agree on: the channel's states as
 * published in the journal's control words, and the configuration a worker
 * is started with.
 */
import type { SharedJournal } from './journal.ts';
import type { VolumeHello } from './secondary-session.ts';

export const ChannelState = {
  idle: 0,
  connecting: 1,
  connected: 2,
  failed: 3,
  stopped: 4,
} as const;

export interface ChannelConfig {
  url: string;
  journal: SharedJournal;
  secret: Uint8Array | undefined;
  mode: 'sync' | 'async';
  payloadBytesMax: number;
  connectTimeoutMs: number;
  ackTimeoutMs: number;
  heartbeatMs: number;
  heartbeatsMissedMax: number;
}
