// Reloads the page's main part every few seconds (data-refresh on body)
// and swaps it in, so paths changing in the fleet show without a reload.
// The markup is the server's: this script only fetches and replaces it.
"use strict";
(function () {
  const every = Math.max(1, Number(document.body.dataset.refresh) || 2) * 1000;
  const view = document.getElementById("view");
  const updated = document.getElementById("updated");
  const stale = document.getElementById("stale");
  let stopped = false;
  async function refresh() {
    try {
      const resp = await fetch("/topology?part=main", { cache: "no-store", credentials: "same-origin" });
      if (resp.status === 401 || resp.status === 403) {
        stale.textContent = "login needed: reload the page";
        stale.hidden = false;
        stopped = true;
        return;
      }
      if (!resp.ok) {
        throw new Error(resp.status + " " + (await resp.text()).trim());
      }
      view.innerHTML = await resp.text();
      const content = document.getElementById("content");
      updated.textContent = "as of " + (content ? content.dataset.generated : "?");
      stale.hidden = true;
    } catch (e) {
      stale.textContent = "not updated: " + e.message;
      stale.hidden = false;
    }
  }
  async function loop() {
    while (!stopped) {
      await new Promise((r) => setTimeout(r, every));
      await refresh();
    }
  }
  loop();
})();
