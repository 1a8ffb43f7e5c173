// The Usage page's chart: requests per period per tenant / product (uPlot, vendored).
(function () {
  "use strict";
  const palette = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2", "#dc2626", "#4b5563", "#db2777"];
  function draw() {
    const holder = document.getElementById("usage-chart");
    const source = document.getElementById("usage-data");
    if (!holder || !source || typeof uPlot === "undefined") return;
    const data = JSON.parse(source.textContent);
    const series = [{}].concat(data.series.map((s, i) => ({
      label: s.label, stroke: palette[i % palette.length], width: 2, points: { show: true, size: 5 },
    })));
    series.push({ label: "refused or failed", stroke: "#ef4444", width: 1, dash: [6, 4], points: { show: true, size: 4 } });
    const columns = [data.time].concat(data.series.map((s) => s.values), [data.errors]);
    const options = {
      width: Math.max(320, holder.clientWidth || 720), height: 240,
      scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.15)] } },
      axes: [{ stroke: "#6b7280", grid: { stroke: "#eef2f7" } }, { stroke: "#6b7280", grid: { stroke: "#eef2f7" }, size: 55 }],
      series,
    };
    holder.dataset.drawn = String(data.series.length);
    return new uPlot(options, columns, holder);
  }
  // A new key (shown once): copy it from the page's text, never from an attribute.
  function copyButton() {
    const button = document.getElementById("copy-key");
    const key = document.getElementById("new-key");
    if (!button || !key) return;
    button.addEventListener("click", () => {
      const done = (text) => { button.textContent = text; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(key.textContent.trim()).then(() => done("Copied"), () => select(key, done));
      } else {
        select(key, done);
      }
    });
  }
  function select(element, done) {
    const range = document.createRange();
    range.selectNodeContents(element);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    done("Selected: press Ctrl+C");
  }
  function start() { draw(); copyButton(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
