// Live progress: tables marked .live poll the JSON they name every 2 s and update their rows in place
// (state, progress bar, summary). No other script runs on these pages; nothing is fetched from elsewhere.
"use strict";
function refresh(table) {
  fetch(table.dataset.poll, {credentials: "same-origin", headers: {Accept: "application/json"}})
    .then((r) => (r.ok ? r.json() : []))
    .then((jobs) => {
      for (const j of jobs) {
        const row = table.querySelector(`tr[data-job="${CSS.escape(j.id)}"]`);
        if (!row) continue;
        const state = row.querySelector('[data-field="state"]');
        state.textContent = j.state;
        state.className = `state state-${j.state}`;
        row.querySelector('[data-field="progress"]').value = j.progress;
        row.querySelector('[data-field="summary"]').textContent = j.summary || "";
      }
    })
    .catch(() => {});
}
document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("table.live")) {
    refresh(table);
    setInterval(() => refresh(table), 2000);
  }
});
