// mmserve console: the little the pages need beyond HTML forms.
// Served from this origin (CSP: script-src 'self'; no inline scripts, no eval).
"use strict";

(function () {
  const csrfToken = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  // Every htmx request carries the session's CSRF token as a header as well
  // (forms also carry it as a field, so they work without JavaScript).
  document.addEventListener("htmx:config:request", (event) => {
    event.detail.ctx.request.headers["X-CSRF-Token"] = csrfToken();
  });

  // --- live charts --------------------------------------------------------------------

  const PALETTE = ["#1d4ed8", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

  function chartSpecs(data) {
    // Which series each chart draws: [label, model, column, colour, dashed].
    const product = data.product;
    const steps = data.steps.length ? data.steps : [product];
    const byStep = (column) => steps.map((step, i) => [step, step, column, PALETTE[(i + 1) % PALETTE.length], false]);
    const latency = [["average", product, "latency_ms", PALETTE[0], false]];
    const q = data.models[product].quantiles_ms;
    if (q["0.5"].some((v) => v !== null)) latency.push(["p50", product, "q:0.5", PALETTE[2], true]);
    if (q["0.99"].some((v) => v !== null)) latency.push(["p99", product, "q:0.99", PALETTE[1], true]);
    return {
      rate: [["answered", product, "requests_per_s", PALETTE[0], false], ["failed", product, "failures_per_s", PALETTE[1], false]],
      latency,
      queue: byStep("queue_ms"),
      compute: byStep("compute_ms"),
      batch: byStep("batch"),
    };
  }

  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });

  function column(data, model, name) {
    const series = data.models[model];
    if (!series) return data.time.map(() => null);
    return name.startsWith("q:") ? series.quantiles_ms[name.slice(2)] : series[name];
  }

  // The top of a chart's y axis. Time charts ignore their rare outliers (a cold start's first
  // request) so that the usual values stay readable: the 95th percentile with headroom.
  function yMax(u, name) {
    const values = u.data.slice(1).flat().filter((v) => v !== null && v !== undefined && isFinite(v)).sort((a, b) => a - b);
    const floor = name === "batch" ? 1 : 0.001;
    if (!values.length) return floor;
    const max = values[values.length - 1];
    if (name === "rate" || name === "batch" || values.length < 8) return Math.max(max * 1.15, floor);
    const p95 = values[Math.floor(values.length * 0.95)];
    return Math.max(Math.min(max, p95 * 2) * 1.15, floor);
  }

  function startLive(section) {
    if (typeof uPlot === "undefined") return;
    const url = section.dataset.liveUrl;
    const every = Number(section.dataset.intervalMs) || 2000;
    const status = document.getElementById("live-status");
    const changesNote = document.getElementById("version-changes");
    const charts = {};
    let markers = [];  // [{t, label}]: where the version that answers changed

    // A dashed vertical line and the new version's name at each change, on every chart.
    function drawMarkers(u) {
      const { ctx, bbox } = u;
      ctx.save();
      ctx.strokeStyle = "#7c3aed";
      ctx.fillStyle = "#7c3aed";
      ctx.lineWidth = Math.max(1, devicePixelRatio);
      ctx.setLineDash([4 * devicePixelRatio, 4 * devicePixelRatio]);
      ctx.font = `${11 * devicePixelRatio}px sans-serif`;
      for (const m of markers) {
        const x = Math.round(u.valToPos(m.t, "x", true));
        if (x < bbox.left || x > bbox.left + bbox.width) continue;
        ctx.beginPath();
        ctx.moveTo(x, bbox.top);
        ctx.lineTo(x, bbox.top + bbox.height);
        ctx.stroke();
        ctx.fillText(m.label, x + 3 * devicePixelRatio, bbox.top + 11 * devicePixelRatio);
      }
      ctx.restore();
    }

    // The versions that answered, interval by interval ("2", "1+2"...) -> where they changed.
    function versionChanges(data) {
      const versions = data.models[data.product].versions || [];
      const found = [];
      let last = null;
      versions.forEach((v, i) => {
        if (v === null) return;
        if (last !== null && v !== last) found.push({ t: data.time[i], label: `v${v}` });
        if (v !== last) last = v;
      });
      const sequence = versions.filter((v, i) => v !== null && v !== versions.slice(0, i).filter((w) => w !== null).pop());
      return { found, sequence: sequence.map((v) => `v${v}`) };
    }

    function build(name, specs, holder) {
      const width = Math.max(320, holder.clientWidth || 540);
      const options = {
        width, height: 200,
        scales: { x: { time: true }, y: { range: (u) => [0, yMax(u, name)] } },
        axes: [
          { stroke: "#6b7280", grid: { stroke: "#eef2f7" }, values: (u, ticks) => ticks.map(clock) },
          { stroke: "#6b7280", grid: { stroke: "#eef2f7" }, size: 55 },
        ],
        series: [{}].concat(specs.map(([label, , , colour, dashed]) => ({
          label, stroke: colour, width: 2, dash: dashed ? [6, 4] : undefined, spanGaps: false,
          points: { show: true, size: 4, width: 1 },  // a lone interval between gaps shows too
        }))),
        legend: { live: false },
        hooks: { draw: [drawMarkers] },
      };
      return new uPlot(options, null, holder);
    }

    async function refresh() {
      let data;
      try {
        const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
        data = await response.json();
        if (!response.ok) throw new Error(data.error || response.statusText);
      } catch (error) {
        if (status) status.textContent = `Live data unavailable: ${error.message}`;
        return;
      }
      const changes = versionChanges(data);
      markers = changes.found;
      if (changesNote) {
        changesNote.hidden = changes.sequence.length === 0;
        changesNote.querySelector("span").textContent = changes.sequence.join(" → ");
      }
      const specs = chartSpecs(data);
      for (const holder of section.querySelectorAll("[data-chart]")) {
        const name = holder.dataset.chart;
        const key = specs[name].map((s) => s[0]).join("|");
        if (!charts[name] || charts[name].key !== key) {
          if (charts[name]) charts[name].plot.destroy();
          charts[name] = { key, plot: build(name, specs[name], holder) };
        }
        charts[name].plot.setData([data.time].concat(specs[name].map(([, model, col]) => column(data, model, col))));
      }
      section.dataset.samples = String(data.time.length);
      if (status) {
        const when = new Date().toLocaleTimeString();
        status.textContent = data.error ? data.error : `${data.time.length} intervals · updated ${when}`;
      }
    }

    refresh();
    setInterval(refresh, every);
    window.addEventListener("resize", () => {
      for (const { plot } of Object.values(charts)) plot.setSize({ width: Math.max(320, plot.root.parentElement.clientWidth), height: 200 });
    });
  }

  // --- microphone -> WAV in the audio form's file input ------------------------------------

  function encodeWav(samples, sampleRate) {
    const buffer = new ArrayBuffer(44 + samples.length * 2);
    const view = new DataView(buffer);
    const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
    text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
    text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
    view.setUint32(24, sampleRate, true); view.setUint32(28, sampleRate * 2, true);
    view.setUint16(32, 2, true); view.setUint16(34, 16, true);
    text(36, "data"); view.setUint32(40, samples.length * 2, true);
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
    return new Blob([buffer], { type: "audio/wav" });
  }

  async function record(button) {
    const status = document.getElementById("record-status");
    const input = document.getElementById("audio-files");
    const seconds = Number(button.dataset.seconds) || 2;
    if (!navigator.mediaDevices?.getUserMedia || typeof MediaRecorder === "undefined") {
      status.textContent = "This browser cannot record here (a microphone needs https or localhost); upload a WAV file instead.";
      return;
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
    } catch (error) {
      status.textContent = `No microphone: ${error.message}`;
      return;
    }
    const chunks = [];
    const recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (event) => { if (event.data.size) chunks.push(event.data); };
    const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
    button.disabled = true;
    button.classList.add("recording");
    status.textContent = `Recording ${seconds} s…`;
    recorder.start();
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    recorder.stop();
    await stopped;
    stream.getTracks().forEach((track) => track.stop());
    button.disabled = false;
    button.classList.remove("recording");
    try {
      // The browser's own decoder turns the recording (WebM/Opus, ...) into PCM; we send WAV.
      const context = new AudioContext();
      const audio = await context.decodeAudioData(await new Blob(chunks).arrayBuffer());
      const wav = encodeWav(audio.getChannelData(0), audio.sampleRate);
      context.close();
      const transfer = new DataTransfer();
      transfer.items.add(new File([wav], "microphone.wav", { type: "audio/wav" }));
      input.files = transfer.files;
      status.textContent = `Recorded ${audio.duration.toFixed(1)} s at ${audio.sampleRate} Hz: press Send.`;
    } catch (error) {
      status.textContent = `Could not decode the recording: ${error.message}; upload a WAV file instead.`;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const section = document.querySelector("[data-live-url]");
    if (section) startLive(section);
    for (const select of document.querySelectorAll("select[data-autosubmit]")) {
      select.addEventListener("change", () => select.form.submit());
    }
    const button = document.getElementById("record");
    if (button) button.addEventListener("click", () => record(button));
  });
})();
