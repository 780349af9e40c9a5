/* Hand-written SVG charts for the console: stacked bars and horizontal bars.
   Everything is built with DOM calls (no innerHTML, no inline styles: the page's
   Content-Security-Policy allows neither). Colours come from CSS classes s0..s7. */
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
    return 10 * power;
  }

  function legend(series) {
    const box = document.createElement("div");
    box.className = "legend";
    series.forEach((name, i) => {
      const item = document.createElement("span");
      item.className = "s" + (i % 8);
      item.textContent = name;
      box.appendChild(item);
    });
    return box;
  }

  /* Stacked bars: `categories` along x, `series` stacked; value(category, series) -> number.
     Each segment carries data-category, data-series and data-value (tests and tooltips). */
  function stackedBars(container, categories, series, value, format) {
    container.replaceChildren();
    const width = 720, height = 220, left = 48, bottom = 28, top = 8;
    const totals = categories.map((c) => series.reduce((sum, s) => sum + (value(c, s) || 0), 0));
    const max = niceMax(Math.max(0, ...totals));
    const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    const plotH = height - bottom - top;
    const slot = (width - left) / Math.max(1, categories.length);
    const barW = Math.max(2, Math.min(48, slot * 0.7));
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      svg.appendChild(el("line", { x1: left, x2: width, y1: y, y2: y, class: "axis" }));
      svg.appendChild(el("text", { x: left - 4, y: y + 4, "text-anchor": "end" }, format(max * i / 4)));
    }
    categories.forEach((category, ci) => {
      let y = top + plotH;
      const x = left + ci * slot + (slot - barW) / 2;
      series.forEach((name, si) => {
        const v = value(category, name) || 0;
        if (v <= 0) return;
        const h = (plotH * v) / max;
        y -= h;
        const rect = el("rect", { x: x, y: y, width: barW, height: Math.max(h, 0.5),
          class: "s" + (si % 8), "data-category": category, "data-series": name, "data-value": v });
        rect.appendChild(el("title", {}, `${category} · ${name}: ${format(v)}`));
        svg.appendChild(rect);
      });
      const every = Math.ceil(categories.length / 10);
      if (ci % every === 0) {
        svg.appendChild(el("text", { x: x + barW / 2, y: height - 10, "text-anchor": "middle" }, category));
      }
    });
    container.appendChild(svg);
    container.appendChild(legend(series));
  }

  /* Horizontal bars, one per label. */
  function horizontalBars(container, rows, format) {
    container.replaceChildren();
    const width = 720, rowH = 22, left = 160;
    const max = niceMax(Math.max(0, ...rows.map((r) => r.value)));
    const svg = el("svg", { viewBox: `0 0 ${width} ${rows.length * rowH + 4}`, role: "img" });
    rows.forEach((row, i) => {
      const y = i * rowH + 2;
      svg.appendChild(el("text", { x: left - 6, y: y + 15, "text-anchor": "end" }, row.label));
      const w = ((width - left - 90) * row.value) / max;
      const rect = el("rect", { x: left, y: y + 3, width: Math.max(w, 0.5), height: rowH - 6,
        class: "s" + (i % 8), "data-category": row.label, "data-value": row.value });
      rect.appendChild(el("title", {}, `${row.label}: ${format(row.value)}`));
      svg.appendChild(rect);
      svg.appendChild(el("text", { x: left + w + 6, y: y + 15 }, format(row.value)));
    });
    container.appendChild(svg);
  }

  /* A gauge: used of limit, as a bar that turns amber past 75 % and red past 95 %. */
  function gauge(used, limit) {
    const share = limit > 0 ? Math.min(1, used / limit) : 0;
    const svg = el("svg", { viewBox: "0 0 200 14", role: "img", "data-share": share.toFixed(3) });
    svg.appendChild(el("rect", { x: 0, y: 0, width: 200, height: 14, rx: 3, class: "track" }));
    const level = share > 0.95 ? " full" : share > 0.75 ? " high" : "";
    svg.appendChild(el("rect", { x: 0, y: 0, width: Math.max(200 * share, 0), height: 14, rx: 3, class: "fill" + level }));
    return svg;
  }

  window.SluiceCharts = { stackedBars, horizontalBars, gauge };
})();
