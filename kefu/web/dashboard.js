// kefu dashboard: reads /ops/status and /ops/series, draws with uPlot (kefu/web/vendor).
// Plain script, no build step. Everything it shows comes from the node's stored history.
// Its words come from the message catalogue (GET /ops/i18n, kefu/locales/) in the browser's
// language, or the one named by ?lang=zh-CN / ?lang=en.
(function () {
  "use strict";
  var words = {}, lang = "en";
  function T(key, vals) {
    var t = words[key];
    if (t === undefined) return key;
    return t.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, function (m, k) { return vals && k in vals ? String(vals[k]) : m; });
  }
  function applyWords() {
    document.querySelectorAll("[data-i18n]").forEach(function (e) { e.textContent = T(e.dataset.i18n); });
    document.querySelectorAll("[data-i18n-attr]").forEach(function (e) {
      e.dataset.i18nAttr.split(";").forEach(function (p) { var kv = p.split(":"); e.setAttribute(kv[0], T(kv[1])); });
    });
    document.documentElement.lang = lang;
    document.title = T("dashboard.doc_title");
  }

  var params = new URLSearchParams(location.search);
  var token = params.get("token");
  var range = params.get("range") || "1h";
  var COLORS = ["#1f6feb", "#e8710a", "#2e7d32", "#c62828", "#8e24aa", "#00838f", "#6d4c41", "#f9a825", "#5c6bc0", "#ad1457"];
  var charts = {};
  var timer = null;
  var intervalS = 10;
  var lastOk = 0;

  function api(path) {
    var headers = token ? { Authorization: "Bearer " + token } : {};
    return fetch(path, { headers: headers, cache: "no-store" }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(body.message || ("HTTP " + r.status));
        return body;
      });
    });
  }

  function num(v, digits) {
    if (v === null || v === undefined || isNaN(v)) return "–";
    var a = Math.abs(v);
    if (digits === undefined && Number.isInteger(v) && a < 1e4) return String(v);
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    return v.toFixed(digits === undefined ? (a >= 100 ? 0 : a >= 10 ? 1 : 2) : digits);
  }

  function dur(s) {
    if (s === null || s === undefined || isNaN(s)) return "–";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function labelText(labels) {
    var keys = Object.keys(labels || {});
    return keys.length ? keys.map(function (k) {
      var v = labels[k];
      if (!v) return T("dashboard.series.none");
      return k === "status" && words["dashboard.agent." + v] !== undefined ? T("dashboard.agent." + v) : v;
    }).join(" · ") : "";
  }

  // The x grid: one slot per step from the range start to its end.
  function grid(data) {
    var xs = [];
    var t = Math.floor(data.start / data.step) * data.step;
    for (; t <= data.end; t += data.step) xs.push(t);
    return xs;
  }

  function onGrid(xs, points, step, scale, fill) {
    var byT = {};
    (points || []).forEach(function (p) { byT[Math.floor(p[0] / step) * step] = p[1]; });
    return xs.map(function (t) {
      var v = byT[t];
      return v === undefined ? fill : v * scale;
    });
  }

  function lines(data, name, opts) {
    opts = opts || {};
    var out = [];
    (data.series[name] || []).forEach(function (s) {
      // count: a rate series shown as events per bucket (avg rate * samples * sample interval)
      var points = opts.count ? s.points.map(function (p) { return [p[0], p[1] * p[4] * data.interval_s]; }) : s.points;
      var text = labelText(s.labels) || opts.label || name;
      out.push({ label: opts.prefix ? T(opts.prefix, { name: text }) : text, color: NAMED[(s.labels || {}).status] || NAMED[opts.color], points: points,
                 scale: opts.scale || 1, fill: opts.fill === undefined ? null : opts.fill, axis: opts.axis || "y" });
    });
    return out;
  }

  function sumPoints(data, name) {
    var acc = {};
    (data.series[name] || []).forEach(function (s) {
      s.points.forEach(function (p) { acc[p[0]] = (acc[p[0]] || 0) + p[1] * p[4]; });
    });
    return acc;
  }

  // Width of a y axis: enough for its longest tick label (uPlot calls this with the labels it will draw).
  function axisSize(u, values) {
    if (!values) return 40;
    var longest = 0;
    values.forEach(function (v) { longest = Math.max(longest, String(v).length); });
    return Math.ceil(longest * 7.2 + 18);
  }

  // Fixed colours where the label has a meaning of its own.
  var NAMED = { online: "#2e7d32", away: "#f9a825", offline: "#9aa3ae", occupancy: "#1f6feb",
                p50: "#2e7d32", p95: "#e8710a", p99: "#c62828" };

  function draw(id, xs, ls, step, opts) {
    opts = opts || {};
    var el = document.getElementById(id);
    var series = [{ label: T("dashboard.time") }];
    var ys = [];
    ls.forEach(function (l, i) {
      var color = l.color || NAMED[l.label] || COLORS[i % COLORS.length];
      var s = { label: l.label, stroke: color, width: 2, scale: l.axis, spanGaps: false,
                value: function (u, v) { return v === null ? "–" : num(v) + (opts.unit || ""); } };
      if (opts.bars) {
        s.fill = color + "55";
        s.paths = uPlot.paths.bars({ size: [0.7, 40] });
        s.points = { show: false };
      }
      series.push(s);
      ys.push(onGrid(xs, l.points, step, l.scale, l.fill));
    });
    var empty = ys.every(function (y) { return y.every(function (v) { return v === null || v === 0; }); });
    var key = ls.map(function (l) { return l.label + "/" + l.axis; }).join("|") + "#" + step;
    var width = el.clientWidth || 500;
    var existing = charts[id];
    if (existing && existing.key === key) {
      existing.plot.setData([xs].concat(ys));
    } else {
      if (existing) existing.plot.destroy();
      el.innerHTML = "";
      var axes = [{ stroke: "#66707f", grid: { stroke: "#eef1f5" } },
                  { stroke: "#66707f", grid: { stroke: "#eef1f5" }, size: axisSize,
                    values: function (u, vals) { return vals.map(function (v) { return num(v) + (opts.unit || ""); }); } }];
      var scales = { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(max || 0, opts.min || 1) * 1.1]; } } };
      if (ls.some(function (l) { return l.axis === "pct"; })) {
        axes.push({ side: 1, scale: "pct", stroke: "#66707f", grid: { show: false }, size: axisSize,
                    values: function (u, vals) { return vals.map(function (v) { return v + "%"; }); } });
        scales.pct = { range: [0, 100] };
      }
      var plot = new uPlot({ width: width, height: 220, series: series, axes: axes, scales: scales,
                             legend: { live: true }, cursor: { drag: { x: false, y: false } } },
                           [xs].concat(ys), el);
      var msg = document.createElement("div");
      msg.className = "empty";
      el.appendChild(msg);
      charts[id] = { plot: plot, key: key, el: el, msg: msg };
    }
    charts[id].msg.textContent = empty ? (ls.length ? T("dashboard.empty.range") : T("dashboard.empty.none")) : "";
  }

  function topIntents(data, n) {
    var totals = [];
    (data.series.intents_per_s || []).forEach(function (s) {
      var t = 0;
      s.points.forEach(function (p) { t += p[1]; });
      totals.push({ s: s, t: t });
    });
    totals.sort(function (a, b) { return b.t - a.t; });
    var out = totals.slice(0, n).map(function (x) {
      return { label: x.s.labels.intent, points: x.s.points, scale: 60, fill: 0, axis: "y" };
    });
    if (totals.length > n) {
      var acc = {};
      totals.slice(n).forEach(function (x) { x.s.points.forEach(function (p) { acc[p[0]] = (acc[p[0]] || 0) + p[1]; }); });
      out.push({ label: T("dashboard.series.other"), points: Object.keys(acc).map(function (t) { return [+t, acc[t]]; }), scale: 60, fill: 0, axis: "y" });
    }
    return out;
  }

  function lastValue(points) {
    return points && points.length ? points[points.length - 1][1] : null;
  }

  function tiles(status, data) {
    var conns = 0;
    Object.keys(status.connections || {}).forEach(function (k) { conns += status.connections[k]; });
    var waiting = 0, oldest = 0;
    Object.keys(status.queues || {}).forEach(function (t) {
      waiting += status.queues[t].waiting;
      oldest = Math.max(oldest, status.queues[t].oldest_wait_s);
    });
    var inNow = 0;
    (data.series.messages_in_per_s || []).forEach(function (s) { inNow += lastValue(s.points) || 0; });
    var p99 = (data.series.message_latency_p99_seconds || [])[0];
    var cont = (data.series.bot_containment_ratio || [])[0];
    var contAvg = null;
    if (cont && cont.points.length) {
      var h = sumPoints(data, "handoffs_per_s"), c = sumPoints(data, "conversations_per_s");
      var hs = 0, cs = 0;
      Object.keys(c).forEach(function (t) { cs += c[t]; hs += h[t] || 0; });
      contAvg = cs > 0 ? Math.max(0, 1 - hs / cs) : null;
    }
    var csat = (data.series.csat_avg || [])[0];
    var csatAvg = null;
    if (csat && csat.points.length) {
      var t = 0;
      csat.points.forEach(function (p) { t += p[1]; });
      csatAvg = t / csat.points.length;
    }
    function total(name) {  // events in the range from a rate series
      var t = 0;
      (data.series[name] || []).forEach(function (s) { s.points.forEach(function (p) { t += p[1] * p[4] * data.interval_s; }); });
      return t;
    }
    var breaches = total("sla_breaches_per_s");
    var rejected = total("rejected_per_s");
    var items = [
      [T("dashboard.tile.messages_in"), num(inNow)],
      [T("dashboard.tile.p99"), p99 && p99.points.length ? num(lastValue(p99.points) * 1000) + " ms" : "–"],
      [T("dashboard.tile.connections"), num(conns, 0)],
      [T("dashboard.tile.waiting"), num(waiting, 0)],
      [T("dashboard.tile.longest_wait"), dur(oldest)],
      [T("dashboard.tile.agents_online"), num((status.agents || {}).online || 0, 0)],
      [T("dashboard.tile.occupancy"), status.occupancy === null || status.occupancy === undefined ? "–" : Math.round(status.occupancy * 100) + "%"],
      [T("dashboard.tile.containment"), contAvg === null ? "–" : Math.round(contAvg * 100) + "%"],
      [T("dashboard.tile.csat"), csatAvg === null ? "–" : csatAvg.toFixed(2) + " / 5"],
      [T("dashboard.tile.sla"), num(Math.round(breaches), 0)],
      [T("dashboard.tile.rejected"), num(Math.round(rejected), 0)],
    ];
    var box = document.getElementById("tiles");
    box.innerHTML = "";
    items.forEach(function (it) {
      var d = document.createElement("div");
      d.className = "tile";
      d.innerHTML = '<div class="k"></div><div class="v"></div>';
      d.children[0].textContent = it[0];
      d.children[1].textContent = it[1];
      box.appendChild(d);
    });
  }

  function render(status, data) {
    var xs = grid(data);
    var step = data.step;
    var st = status.storage || {};
    document.getElementById("node").textContent = T("dashboard.node", { node: status.node, version: status.version,
      uptime: dur(status.uptime_s), storage: st.backend + (st.timescaledb ? " (TimescaleDB " + st.timescaledb + ")" : "") }) +
      (st.ready === false ? " · " + T("dashboard.not_ready", { reason: st.reason }) : "");
    document.getElementById("source").textContent = T("dashboard.source", { range: words["dashboard.range." + data.range] !== undefined ? T("dashboard.range." + data.range) : data.range, step: step,
      source: data.source, interval: data.interval_s });
    tiles(status, data);

    draw("c-traffic", xs, lines(data, "messages_in_per_s", { prefix: "dashboard.series.in", label: T("dashboard.series.desk") })
      .concat(lines(data, "messages_out_per_s", { prefix: "dashboard.series.out", label: T("dashboard.series.desk") }))
      .concat(lines(data, "mqtt_messages_in_per_s", { label: T("dashboard.series.mqtt_in") }))
      .concat(lines(data, "mqtt_messages_out_per_s", { label: T("dashboard.series.mqtt_out") })), step, { unit: "/s" });
    draw("c-latency", xs, [].concat(
      lines(data, "message_latency_p50_seconds", { label: "p50", scale: 1000 }),
      lines(data, "message_latency_p95_seconds", { label: "p95", scale: 1000 }),
      lines(data, "message_latency_p99_seconds", { label: "p99", scale: 1000 })), step, { unit: " ms" });
    draw("c-queue", xs, lines(data, "queue_length"), step, { min: 2 });
    draw("c-wait", xs, lines(data, "queue_wait_seconds"), step, { unit: " s", min: 10 });
    draw("c-agents", xs, lines(data, "agents").concat(
      lines(data, "agent_occupancy_ratio", { label: T("dashboard.series.occupancy"), color: "occupancy", scale: 100, axis: "pct" })), step, { min: 2 });
    draw("c-intents", xs, topIntents(data, 6), step, { unit: "/min" });
    draw("c-containment", xs, lines(data, "bot_containment_ratio", { label: T("dashboard.series.containment"), scale: 100, axis: "pct" })
      .concat(lines(data, "conversations_per_s", { label: T("dashboard.series.conversations"), scale: 60 })), step, {});
    draw("c-sla", xs, lines(data, "sla_breaches_per_s", { count: true, fill: 0 }), step, { bars: true, min: 2 });

    var al = document.getElementById("alerts");
    var firing = data.alerts_firing || [];
    al.hidden = !firing.length;
    al.innerHTML = "";
    firing.forEach(function (a) {
      var d = document.createElement("div");
      d.appendChild(document.createElement("b")).textContent = T("dashboard.firing");
      d.appendChild(document.createTextNode(" " + T("dashboard.alert", { alert: a.alert, metric: a.metric, labels: labelText(a.labels),
        value: num(a.value), op: a.op, threshold: a.threshold, time: new Date(a.since * 1000).toLocaleTimeString(lang) })));
      al.appendChild(d);
    });
  }

  function refresh() {
    clearTimeout(timer);
    Promise.all([api("/ops/status"), api("/ops/series?range=" + encodeURIComponent(range))]).then(function (r) {
      intervalS = Math.max(2, r[1].interval_s || 10);
      render(r[0], r[1]);
      lastOk = Date.now();
      document.getElementById("error").hidden = true;
      var live = document.getElementById("live");
      live.className = "muted";
      live.textContent = T("dashboard.live", { time: new Date().toLocaleTimeString(lang) });
      document.body.setAttribute("data-ready", "1");
    }).catch(function (e) {
      var err = document.getElementById("error");
      err.hidden = false;
      err.textContent = T("dashboard.error", { message: e.message });
      var live = document.getElementById("live");
      live.className = "muted stale";
      live.textContent = lastOk ? T("dashboard.stale", { time: new Date(lastOk).toLocaleTimeString(lang) }) : T("dashboard.no_data");
      document.body.setAttribute("data-ready", "error");
    }).then(function () {
      timer = setTimeout(refresh, intervalS * 1000);
    });
  }

  document.querySelectorAll("#ranges button").forEach(function (b) {
    b.classList.toggle("on", b.getAttribute("data-range") === range);
    b.addEventListener("click", function () {
      range = b.getAttribute("data-range");
      document.querySelectorAll("#ranges button").forEach(function (x) { x.classList.toggle("on", x === b); });
      params.set("range", range);
      history.replaceState(null, "", "?" + params.toString());
      document.body.removeAttribute("data-ready");
      refresh();
    });
  });
  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) {
      var c = charts[id];
      c.plot.setSize({ width: c.el.clientWidth, height: 220 });
    });
  });
  var wanted = params.get("lang") || (navigator.languages && navigator.languages.length ? navigator.languages.join(",") : navigator.language || "");
  fetch("/ops/i18n?lang=" + encodeURIComponent(wanted)).then(function (r) { return r.json(); }).then(function (b) {
    lang = b.language; words = b.messages;
    applyWords();
  }).catch(function (e) { if (window.console) console.error("dashboard words:", e); }).then(refresh);
})();
