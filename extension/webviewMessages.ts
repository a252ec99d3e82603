// webviewMessages.ts — every message between the chat webview (media/src/chat.ts) and the
// extension host (extension/chatView.ts), as two discriminated unions, plus the closed list of
// commands the webview may run. Both sides import it: esbuild for the webview, tsc for the host.
import type { ChatResult, ContextMode, LeftOutFile, Usage } from '../sidecar/protocol';

export type TurnState = 'streaming' | 'done' | 'cancelled' | 'error';

/** One question and its answer. The answer is model output: markdown, sanitized when rendered. */
export interface Turn {
  id: string;
  kind: 'explain' | 'selection' | 'chat';
  /** What the user asked, shown as plain text. */
  prompt: string;
  /** The user message the model got, when it holds more than `prompt` (Ask About Selection: the selected code). */
  sent?: string;
  answer: string;
  state: TurnState;
  error?: string;
  /** Filled in when the answer ends. */
  context?: ChatResult['context'];
  model?: string;
  demo?: boolean;
  usage?: Usage;
  stopReason?: ChatResult['stopReason'];
  decodeTokensPerSecond?: number;
}

/** The panel header: which model answers, and what the workspace context holds. */
export interface PanelInfo {
  sidecar: 'starting' | 'running' | 'stopped';
  sidecarError?: string;
  modelState: 'none' | 'loading' | 'ready' | 'error' | 'unknown';
  modelError?: string;
  model: { name: string; demo: boolean; backend: string; backendNote?: string; weightType: string } | null;
  kvSpec: string;
  /** The sidecar's words for the user, e.g. the demo model's "answers are meaningless". */
  notice?: string;
  /** Problems that did not stop the sidecar (a KV spec the engine rejected, ...). */
  warnings: string[];
  workspace: {
    state: 'none' | 'collecting' | 'prefilling' | 'ready' | 'error';
    files: number;
    tokens: number;
    budgetTokens: number;
    /** At most the first 100, with the total in leftOutCount. */
    leftOut: LeftOutFile[];
    leftOutCount: number;
  } | null;
  busy: boolean;
}

/** Commands the webview may ask the extension to run (a closed list, not any command id). */
export type WebviewCommand = 'llamakv.selectModel' | 'llamakv.indexWorkspace' | 'llamakv.showCacheDetails';

/** Extension host → webview. */
export type ToWebview =
  | { type: 'state'; turns: Turn[]; info: PanelInfo }
  | { type: 'info'; info: PanelInfo }
  | { type: 'turn'; turn: Turn } // a new turn, or a turn that changed state (full copy)
  | { type: 'delta'; id: string; text: string } // streamed answer text to append
  | { type: 'cleared' };

/** Webview → extension host. */
export type FromWebview =
  | { type: 'ready' }
  | { type: 'ask'; text: string; context: ContextMode }
  | { type: 'stop' }
  | { type: 'clear' }
  | { type: 'command'; command: WebviewCommand }
  /** The webview finished rendering a turn in this state (lets tests wait for the DOM). */
  | { type: 'rendered'; id: string; state: TurnState; chars: number; blocked: number };

export const WEBVIEW_COMMANDS: readonly WebviewCommand[] = ['llamakv.selectModel', 'llamakv.indexWorkspace', 'llamakv.showCacheDetails'];
