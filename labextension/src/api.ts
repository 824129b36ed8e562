// The browser talks only to the server extension, below <base_url>/mlaas4hep-lab/.
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export const API = 'mlaas4hep-lab';

/** An error answered by the server extension, with its status and message. */
export class APIError extends Error {
  constructor(
    message: string,
    public status: number
  ) {
    super(message);
  }
}

let settings: ServerConnection.ISettings = ServerConnection.makeSettings();

export function setServerSettings(s: ServerConnection.ISettings): void {
  settings = s;
}

/** The absolute URL of an extension route (for links the browser follows itself: downloads). */
export function apiURL(endPoint: string): string {
  return URLExt.join(settings.baseUrl, API, endPoint);
}

/** Call a route; JSON in and out. Throws APIError with the server's message on a 4xx/5xx answer. */
export async function requestAPI<T>(
  endPoint: string,
  init: RequestInit = {}
): Promise<T> {
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(
      apiURL(endPoint),
      init,
      settings
    );
  } catch (error) {
    throw new APIError(`the Jupyter server did not answer (${error})`, 0);
  }
  const text = await response.text();
  let data: any = null;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!response.ok) {
    const message =
      data && typeof data === 'object' && data.message ? data.message : text;
    throw new APIError(String(message || response.statusText), response.status);
  }
  return data as T;
}

/** POST/DELETE helpers with a JSON body. */
export function send<T>(
  method: string,
  endPoint: string,
  body?: unknown
): Promise<T> {
  return requestAPI<T>(endPoint, {
    method,
    body: body === undefined ? undefined : JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' }
  });
}

/** Query string of a mapping (undefined and null left out; arrays repeat the key). */
export function query(args: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(args)) {
    if (v === undefined || v === null) {
      continue;
    }
    for (const item of Array.isArray(v) ? v : [v]) {
      parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(String(item))}`);
    }
  }
  return parts.length ? `?${parts.join('&')}` : '';
}
