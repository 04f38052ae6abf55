import type { DatasetRead } from "../client/types.gen";
import { toApiError } from "./errors";
import { EXPIRED, signOut, token } from "./auth";

// fetch() reports no upload progress; XMLHttpRequest does, so the drop zone's bar is real.
export function uploadDataset(file: File, onProgress: (fraction: number) => void,
  extra: Record<string, string> = {}): Promise<DatasetRead> {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", file);
    for (const [k, v] of Object.entries(extra)) if (v) form.append(k, v);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/datasets");
    const t = token();
    if (t) xhr.setRequestHeader("Authorization", `Bearer ${t}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      let body: unknown = xhr.responseText;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* not JSON */
      }
      if (xhr.status === 201) resolve(body as DatasetRead);
      else {
        if (xhr.status === 401) signOut(EXPIRED);
        reject(toApiError(xhr.status, body));
      }
    };
    xhr.onerror = () => reject(toApiError(0, null));
    xhr.send(form);
  });
}
