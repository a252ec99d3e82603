// lsp.ts — typed calls of the protocol's methods (sidecar/protocol.ts) through a LanguageClient.
// protocol.ts and vscode-languageclient share one vscode-jsonrpc (pinned to 8.2.0 in
// package.json), so the constants pass straight through with their parameter and result types.
import type { CancellationToken } from 'vscode';
import type { LanguageClient } from 'vscode-languageclient/node';
import type { NotificationType, RequestType, RequestType0 } from 'vscode-jsonrpc';

export function request<P, R>(client: LanguageClient, type: RequestType<P, R, void>, params: P, token?: CancellationToken): Promise<R> {
  return client.sendRequest(type, params, token);
}

export function request0<R>(client: LanguageClient, type: RequestType0<R, void>, token?: CancellationToken): Promise<R> {
  return client.sendRequest(type, token);
}

export function notify<P>(client: LanguageClient, type: NotificationType<P>, params: P): Promise<void> {
  return client.sendNotification(type, params);
}

export function onNotification<P>(client: LanguageClient, type: NotificationType<P>, handler: (params: P) => void): { dispose(): void } {
  return client.onNotification(type, handler);
}
