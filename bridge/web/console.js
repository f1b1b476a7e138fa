/* kefu agent console. Plain JS, no build step.
 *
 * Reads go over the REST API (/api/v1, api_access_token header); everything live —
 * new messages, conversation changes, typing, read receipts — arrives on one /chat
 * WebSocket authenticated with the same token, and the agent's own actions (reply,
 * note, accept, transfer, resolve, labels, status) go out on it as frames, each with a
 * ref so the ack or error lands on the right button.
 *
 * The search box above the tabs searches stored transcripts (GET /api/v1/search);
 * while it holds text the results replace the conversation list, and a result opens
 * its conversation with the matching line marked.
 *
 * Words: every text comes from the message catalogue (GET /i18n?lang=..., kefu/locales/),
 * in the agent's language (its setting, kept by the server; the switcher under its name
 * changes it), or the browser's until the agent has signed in.
 */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var S = {
    token: sessionStorage.getItem("kefu.console.token") || "",
    me: null, tab: "mine", convs: [], current: null, messages: [], contact: null,
    agents: [], labels: [], canned: [], ws: null, refs: 0, waiting: {}, unread: {},
    backoff: 1000, reloadTimer: null, typingTimer: null, sentTyping: false, wsBase: "",
    searchTimer: null, searchSeq: 0, hit: null, scrollToHit: false, lang: null, words: {}
  };

  // ------------------------------------------------------------------ words
  function T(key, vals) {
    var t = S.words[key];
    if (t === undefined) return key;
    return t.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, function (m, k) { return vals && k in vals ? String(vals[k]) : m; });
  }
  function applyWords() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-i18n]"), function (e) { e.textContent = T(e.dataset.i18n); });
    Array.prototype.forEach.call(document.querySelectorAll("[data-i18n-attr]"), function (e) {
      e.dataset.i18nAttr.split(";").forEach(function (p) { var kv = p.split(":"); e.setAttribute(kv[0], T(kv[1])); });
    });
    document.documentElement.lang = S.lang;
    document.title = T("console.doc_title");
    $("me-lang").value = S.lang;
  }
  // Load the catalogue for a list of wanted languages (the first one served wins).
  function loadWords(wanted) {
    return fetch("/i18n?lang=" + encodeURIComponent(wanted.join(","))).then(function (r) { return r.json(); }).then(function (b) {
      S.lang = b.language; S.words = b.messages;
      localStorage.setItem("kefu.console.lang", S.lang);
      applyWords();
    });
  }
  function browserLanguages() {
    var stored = localStorage.getItem("kefu.console.lang");
    var nav = navigator.languages && navigator.languages.length ? Array.prototype.slice.call(navigator.languages) : [navigator.language || ""];
    return stored ? [stored] : nav;
  }
  // the connection line: kept as a key, so a language switch redraws it
  function showConn(key, vals) { S.conn = [key, vals]; $("conn").textContent = T(key, vals); }
  function rerender() {
    if (!S.me) return;
    if (S.conn) showConn(S.conn[0], S.conn[1]);
    fillTransfer(); fillCanned(); renderList();
    if (S.current) { renderHeader(); renderLabels(); renderMessages(); renderProfile(); }
    if ($("search").value.trim()) runSearch();
  }
  $("me-lang").addEventListener("change", function () {
    var lang = $("me-lang").value;
    api("PUT", "/profile/language", { language: lang }).then(function (a) {
      S.me.language = a.language;
      return loadWords([lang]);
    }).then(rerender).catch(function (e) { alert(errText(e)); });
  });

  function api(method, path, body) {
    var opts = { method: method, headers: { "api_access_token": S.token } };
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    return fetch("/api/v1" + path, opts).then(function (r) {
      if (r.status === 204) return null;
      return r.json().then(function (j) {
        if (!r.ok) { var e = new Error(j.message || ("HTTP " + r.status)); e.status = r.status; e.code = j.error; throw e; }
        return j.data;
      });
    });
  }
  // Text someone else wrote is shown as it is: bidirectional overrides and invisible
  // characters (U+202E and friends, zero-width space) become visible markers instead of
  // silently reordering or hiding text (kefu/edge.py display_safe does the same server-side).
  var DECEPTIVE = /[\u202a-\u202e\u2066-\u2069\u200b\u200e\u200f\u061c\u2060\ufeff\u180e]/g;
  function shown(text) {
    return String(text).replace(DECEPTIVE, function (c) {
      return "\u27e6U+" + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0") + "\u27e7";
    });
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = shown(text);
    return e;
  }
  function fmtTime(ts) { return ts ? new Date(ts * 1000).toLocaleTimeString(S.lang || [], { hour: "2-digit", minute: "2-digit" }) : ""; }
  // a value from a fixed set (channel, contact kind, handoff reason): its words where the catalogue has them
  function TV(prefix, v) {
    if (v === undefined || v === null || v === "") return v;
    var m = /^rule:(.*)$/.exec(v);
    if (prefix === "console.handoff." && m) return T("console.handoff.rule", { rule: m[1] });
    return S.words[prefix + v] !== undefined ? T(prefix + v) : v;
  }
  // an error for a person: the catalogue's words for its code, the server's detail after them
  function errText(e) {
    var k = "console.error." + e.code;
    return e.code && S.words[k] !== undefined ? T(k, { detail: e.message }) : e.message;
  }
  // who wrote: the bot and the desk by the catalogue's names, people by their own
  function author(a) { return a.kind === "bot" || a.kind === "system" ? T("console.author." + a.kind) : (a.name || a.id); }

  // ------------------------------------------------------------------ sign in
  function showSignin(msg) {
    $("app").hidden = true; $("signin").hidden = false;
    $("signin-err").textContent = msg || "";
    $("token").focus();
  }
  $("signin-form").addEventListener("submit", function (e) {
    e.preventDefault();
    S.token = $("token").value.trim();
    signIn();
  });
  $("signout").addEventListener("click", function () {
    sessionStorage.removeItem("kefu.console.token");
    if (S.ws) { S.ws.onclose = null; S.ws.close(); }
    S.token = ""; showSignin("");
  });

  function signIn() {
    api("GET", "/profile").then(function (p) {
      if (!p.agent) throw new Error(T("console.signin.not_agent"));
      sessionStorage.setItem("kefu.console.token", S.token);
      S.me = p.agent;
      S.wsBase = p.ws_url || "";
      // the agent's own language wins over the browser's
      var words = p.agent.language && p.agent.language !== S.lang ? loadWords([p.agent.language]) : null;
      $("signin").hidden = true; $("app").hidden = false;
      $("me-name").textContent = S.me.name || S.me.id;
      $("me-avatar").textContent = (S.me.name || S.me.id).slice(0, 1).toUpperCase();
      showMyStatus(S.me.status);
      return Promise.all([
        words,
        api("GET", "/agents").then(function (d) { S.agents = d.payload; fillTransfer(); }),
        api("GET", "/labels").then(function (d) { S.labels = d.payload; fillLabelList(); }),
        api("GET", "/canned_responses").then(function (d) { S.canned = d.payload; fillCanned(); })
      ]);
    }).then(function () {
      loadList();
      connect();
    }).catch(function (e) { showSignin(e.status === 401 ? T("console.signin.unknown") : errText(e)); });
  }

  // ------------------------------------------------------------------ live socket
  function wsUrl() {
    if (S.wsBase) return S.wsBase + "/chat";
    var port = document.body.dataset.wsPort || "8083";
    return (location.protocol === "https:" ? "wss://" : "ws://") + location.hostname + ":" + port + "/chat";
  }
  function connect() {
    var ws = new WebSocket(wsUrl());
    S.ws = ws;
    showConn("console.conn.connecting");
    ws.onopen = function () { ws.send(JSON.stringify({ type: "auth", role: "agent", token: S.token, ref: "auth" })); };
    ws.onmessage = function (ev) { var f; try { f = JSON.parse(ev.data); } catch (e) { return; } onFrame(f); };
    ws.onclose = function () {
      clearInterval(S.ping);
      showConn("console.conn.offline");
      var wait = S.backoff; S.backoff = Math.min(S.backoff * 2, 30000);
      setTimeout(connect, wait);
    };
  }
  function send(frame) {
    S.refs += 1;
    frame.ref = "c" + S.refs;
    return new Promise(function (resolve, reject) {
      if (!S.ws || S.ws.readyState !== 1) { reject(new Error(T("console.not_connected"))); return; }
      S.waiting[frame.ref] = { resolve: resolve, reject: reject };
      S.ws.send(JSON.stringify(frame));
    });
  }
  function onFrame(f) {
    if (f.ref && S.waiting[f.ref]) {
      var w = S.waiting[f.ref]; delete S.waiting[f.ref];
      if (f.type === "error") { var err = new Error(f.message); err.code = f.code; w.reject(err); } else w.resolve(f);
      if (f.type === "ack" || f.type === "error") return;
    }
    switch (f.type) {
      case "ready":
        S.backoff = 1000;
        showConn("console.conn.live");
        if (S.me.status === "offline") setStatus("online");
        clearInterval(S.ping);
        S.ping = setInterval(function () { if (S.ws.readyState === 1) S.ws.send('{"type":"ping"}'); }, 25000);
        loadList();
        break;
      case "message":
        var m = f.message;
        if (S.current && m.conversation === S.current.id) {
          if (!S.messages.some(function (x) { return x.id === m.id; })) { S.messages.push(m); renderMessages(); }
          if (m.author.kind === "customer") { $("typing").textContent = ""; markRead(); }
        } else if (m.author.kind === "customer") {
          S.unread[m.conversation] = true;
        }
        scheduleReload();
        break;
      case "conversation":
        if (S.current && f.conversation.id === S.current.id) {
          S.current = Object.assign({}, S.current, f.conversation);
          if (f.rating) S.current.csat_comment = f.comment || "";
          renderHeader(); renderLabels();
        }
        scheduleReload();
        break;
      case "typing":
        if (S.current && f.conversation === S.current.id && f.author.kind === "customer") {
          $("typing").textContent = f.on ? T("console.typing") : "";
        }
        break;
      case "agent":
        if (f.agent.id === S.me.id) showMyStatus(f.agent.status);
        S.agents.forEach(function (a) { if (a.id === f.agent.id) a.status = f.agent.status; });
        fillTransfer();
        break;
      case "error":
        showConn("console.conn.error", { message: f.message });
        break;
    }
  }

  // ------------------------------------------------------------------ lists
  function scheduleReload() { clearTimeout(S.reloadTimer); S.reloadTimer = setTimeout(loadList, 150); }
  function loadList() {
    var q = S.tab === "mine" ? "assignee=me&status=open" : S.tab === "unassigned" ? "assignee=none&status=open" : "status=open";
    api("GET", "/conversations?" + q).then(function (d) {
      S.convs = d.payload;
      $("n-mine").textContent = d.meta.mine_count;
      $("n-unassigned").textContent = d.meta.unassigned_count;
      $("n-all").textContent = d.meta.all_count;
      renderList();
    }).catch(function (e) { showConn("console.conn.error", { message: errText(e) }); });
  }
  function renderList() {
    var ul = $("convs"); ul.textContent = "";
    if (!S.convs.length) { ul.appendChild(el("li", "none", T("console.nothing"))); return; }
    S.convs.forEach(function (c) {
      var li = el("li", (S.current && S.current.id === c.id ? "sel " : "") + (S.unread[c.id] ? "unread" : ""));
      li.dataset.id = c.id;
      var top = el("div", "top");
      top.appendChild(el("span", "cust", c.customer));
      var pills = el("span");
      if (c.priority && c.priority !== "normal") pills.appendChild(el("span", "pill " + c.priority, T("console.priority." + c.priority)));
      pills.appendChild(el("span", "pill " + c.status, c.status === "assigned" && c.assignee ? (c.assignee === S.me.id ? T("console.mine") : c.assignee) : T("console.state." + c.status)));
      top.appendChild(pills);
      li.appendChild(top);
      var last = c.last_message ? c.last_message.text : (c.intent ? T("console.intent", { intent: c.intent }) : TV("console.channel.", c.channel));
      li.appendChild(el("div", "prev", last || ""));
      li.addEventListener("click", function () { openConv(c.id); });
      ul.appendChild(li);
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll(".tabs button"), function (b) {
    b.addEventListener("click", function () {
      S.tab = b.dataset.tab;
      Array.prototype.forEach.call(document.querySelectorAll(".tabs button"), function (x) { x.classList.toggle("on", x === b); });
      loadList();
    });
  });

  // ------------------------------------------------------------------ thread
  function openConv(id, focus) {
    delete S.unread[id];
    S.hit = focus || null; S.scrollToHit = !!focus;
    return api("GET", "/conversations/" + encodeURIComponent(id)).then(function (c) {
      S.current = c;
      $("empty").hidden = true;
      ["thead", "msgs", "composer", "side"].forEach(function (x) { $(x).hidden = false; });
      $("typing").textContent = "";
      renderHeader(); renderLabels(); renderList();
      return Promise.all([
        api("GET", "/conversations/" + encodeURIComponent(id) + "/messages?limit=100").then(function (d) {
          S.messages = d.payload; renderMessages(); markRead();
        }),
        api("GET", "/contacts/" + encodeURIComponent(c.customer)).then(function (ct) { S.contact = ct; renderProfile(); },
          function () { S.contact = { id: c.customer }; renderProfile(); }),
        api("GET", "/contacts/" + encodeURIComponent(c.customer) + "/conversations").then(function (d) { renderPast(d.payload); })
      ]);
    });
  }
  function renderHeader() {
    var c = S.current;
    $("t-title").textContent = c.customer;
    var bits = [T("console.state." + c.status), TV("console.channel.", c.channel), c.team ? T("console.team", { team: c.team }) : "",
                c.assignee ? T("console.assignee", { agent: c.assignee }) : T("console.unassigned"),
                c.priority ? T("console.priority." + c.priority) : ""];
    var sub = $("t-sub"); sub.textContent = bits.filter(Boolean).join(" · ");
    if (c.csat) {
      sub.appendChild(document.createTextNode(" · " + T("console.csat") + " "));
      sub.appendChild(el("span", "csat", stars(c.csat))).title = T("console.csat.of5", { rating: c.csat });
    }
    var mine = c.assignee === S.me.id;
    $("a-accept").hidden = !((c.status === "queued") || (c.status === "assigned" && mine && c.accepted === false));
    $("a-accept").textContent = c.status === "assigned" ? T("console.accept") : T("console.pickup");
    $("a-resolve").hidden = !(c.status === "assigned" && mine);
    $("a-reopen").hidden = !(c.status === "resolved" || c.status === "closed");
    $("a-transfer").disabled = !(c.status === "assigned" || c.status === "queued");
    renderConvInfo();
  }
  function renderMessages() {
    var box = $("msgs"); box.textContent = "";
    S.messages.forEach(function (m) {
      var kind = m.private ? "note" : m.author.kind;
      var d = el("div", "m " + kind);
      d.dataset.id = m.id;
      var by = m.private ? T("console.note_by", { name: author(m.author) }) : (m.author.kind === "customer" ? "" : author(m.author));
      if (by) d.appendChild(el("div", "by", by + " · " + fmtTime(m.ts)));
      d.appendChild(document.createTextNode(shown(m.text)));
      if (S.hit && m.id === S.hit) d.classList.add("hit");
      box.appendChild(d);
    });
    var hit = box.querySelector(".m.hit");
    if (hit && S.scrollToHit) { hit.scrollIntoView({ block: "center" }); S.scrollToHit = false; }
    else box.scrollTop = box.scrollHeight;
  }
  function stars(n) { return "★★★★★".slice(0, n) + "☆☆☆☆☆".slice(0, 5 - n); }
  function markRead() {
    var last = null;
    S.messages.forEach(function (m) { if (m.author.kind === "customer") last = m.id; });
    if (last !== null && S.current && S.current.assignee === S.me.id) send({ type: "read", conversation: S.current.id, up_to: last }).catch(function () {});
  }

  // ------------------------------------------------------------------ composer
  function mode() { return document.querySelector("input[name=mode]:checked").value; }
  Array.prototype.forEach.call(document.querySelectorAll("input[name=mode]"), function (r) {
    r.addEventListener("change", function () { $("composer").classList.toggle("note", mode() === "note"); });
  });
  $("composer").addEventListener("submit", function (e) {
    e.preventDefault();
    var text = $("text").value.trim();
    if (!text || !S.current) return;
    var frame = { type: "message", conversation: S.current.id, text: text };
    if (mode() === "note") frame.private = true;
    $("text").value = "";
    stopTyping();
    send(frame).then(function (ack) {
      if (ack.message && !S.messages.some(function (x) { return x.id === ack.message.id; })) { S.messages.push(ack.message); renderMessages(); }
    }).catch(function (err) { $("text").value = text; alert(T("console.not_sent", { message: errText(err) })); });
  });
  $("text").addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("text").addEventListener("input", function () {
    if (!S.current || mode() === "note") return;
    if (!S.sentTyping) { S.sentTyping = true; send({ type: "typing", conversation: S.current.id, on: true }).catch(function () {}); }
    clearTimeout(S.typingTimer); S.typingTimer = setTimeout(stopTyping, 3000);
  });
  function stopTyping() {
    clearTimeout(S.typingTimer);
    if (S.sentTyping && S.current) { S.sentTyping = false; send({ type: "typing", conversation: S.current.id, on: false }).catch(function () {}); }
  }
  function fillCanned() {
    var sel = $("canned"); sel.textContent = "";
    sel.appendChild(el("option", null, T("console.canned"))).value = "";
    S.canned.forEach(function (c) { var o = el("option", null, "/" + c.code + " — " + c.text.slice(0, 40)); o.value = c.text; sel.appendChild(o); });
  }
  $("canned").addEventListener("change", function () {
    var v = $("canned").value; if (!v) return;
    var t = $("text"); t.value = t.value ? t.value + " " + v : v; t.focus(); $("canned").value = "";
  });

  // ------------------------------------------------------------------ actions
  function act(action, extra) {
    var f = Object.assign({ type: "action", action: action, conversation: S.current.id }, extra || {});
    return send(f).then(function (ack) { if (ack.conversation) { S.current = Object.assign({}, S.current, ack.conversation); renderHeader(); renderLabels(); } loadList(); })
      .catch(function (e) { alert(T("console.failed", { action: T("console.action." + action), message: errText(e) })); });
  }
  $("a-accept").addEventListener("click", function () { act(S.current.status === "queued" ? "pickup" : "accept"); });
  $("a-resolve").addEventListener("click", function () { act("resolve"); });
  $("a-reopen").addEventListener("click", function () { act("reopen"); });
  $("a-transfer").addEventListener("change", function () {
    var v = $("a-transfer").value; $("a-transfer").value = "";
    if (!v) return;
    var p = v.split(":");
    act("transfer", p[0] === "team" ? { team: p[1] } : { agent: p[1] });
  });
  function fillTransfer() {
    var sel = $("a-transfer"); sel.textContent = "";
    sel.appendChild(el("option", null, T("console.transfer"))).value = "";
    var teams = {};
    S.agents.forEach(function (a) { (a.teams || []).forEach(function (t) { teams[t] = 1; }); });
    Object.keys(teams).sort().forEach(function (t) { var o = el("option", null, T("console.transfer.team", { team: t })); o.value = "team:" + t; sel.appendChild(o); });
    S.agents.forEach(function (a) {
      if (S.me && a.id === S.me.id) return;
      var o = el("option", null, (a.name || a.id) + " (" + T("console.presence." + a.status) + ")"); o.value = "agent:" + a.id; sel.appendChild(o);
    });
  }

  // status
  function showMyStatus(st) {
    S.me.status = st;
    $("me-status").value = st;
    $("me-avatar").className = "avatar s-" + st;
  }
  function setStatus(st) { return send({ type: "status", status: st }).then(function () { showMyStatus(st); }).catch(function (e) { alert(errText(e)); }); }
  $("me-status").addEventListener("change", function () { setStatus($("me-status").value); });

  // ------------------------------------------------------------------ sidebar
  function dl(id, pairs) {
    var box = $(id); box.textContent = "";
    var any = false;
    pairs.forEach(function (p) {
      if (p[1] === undefined || p[1] === null || p[1] === "") return;
      any = true;
      box.appendChild(el("dt", null, T("console.field." + p[0], p[2])));
      box.appendChild(el("dd", null, typeof p[1] === "object" ? JSON.stringify(p[1]) : String(p[1])));
    });
    if (!any) { box.appendChild(el("dt", null, "—")); box.appendChild(el("dd", null, "")); }
  }
  function renderProfile() {
    var c = S.contact || {}, a = c.attributes || {}, side = c.sidebar || {}, crm = side.crm || {};
    // a pair: [catalogue key under console.field., value, placeholder values]; custom keys show as they are
    var pairs = [["id", c.id], ["name", c.name], ["email", c.email], ["phone", c.phone], ["tier", c.tier], ["kind", TV("console.kind.", c.kind)], ["site", a.site]];
    Object.keys(a).forEach(function (k) {
      if (["site", "page", "user_agent", "locale", "language", "identified", "device"].indexOf(k) < 0 && k.indexOf("device") !== 0) pairs.push(["custom", a[k], { key: k }]);
    });
    Object.keys(crm).forEach(function (k) { pairs.push(["crm", crm[k], { key: k }]); });
    dl("profile", pairs);
    var dev = typeof a.device === "object" && a.device ? a.device : {};
    var dpairs = [];
    Object.keys(dev).forEach(function (k) { dpairs.push(["custom", dev[k], { key: k }]); });
    Object.keys(a).forEach(function (k) { if (k.indexOf("device_") === 0) dpairs.push(["custom", a[k], { key: k.slice(7) }]); });
    dpairs.push(["channel", TV("console.channel.", S.current.channel)]);
    if (a.page) dpairs.push(["page", a.page]);
    if (a.locale) dpairs.push(["locale", a.locale]);
    if (a.language) dpairs.push(["language", T("lang." + a.language)]);
    if (a.user_agent) dpairs.push(["browser", a.user_agent]);
    dl("device", dpairs);
  }
  function renderConvInfo() {
    var c = S.current;
    var csat = c.csat ? c.csat + "/5 " + stars(c.csat) + (c.csat_comment ? " — " + c.csat_comment : "") : "";
    dl("convinfo", [["id", c.id], ["status", T("console.state." + c.status)], ["csat", csat], ["intent", c.intent], ["sentiment", TV("console.sentiment.", c.sentiment)], ["handoff", TV("console.handoff.", c.handoff_reason)], ["ticket", c.ticket_id], ["started", c.created_at ? new Date(c.created_at * 1000).toLocaleString(S.lang) : ""]]);
  }
  function renderLabels() {
    var box = $("labels"); box.textContent = "";
    (S.current.labels || []).forEach(function (l) {
      var chip = el("span", "chip", l);
      var x = el("button", null, "×"); x.title = T("console.label.remove", { label: l });
      x.addEventListener("click", function () { act("labels", { labels: S.current.labels.filter(function (y) { return y !== l; }) }); });
      chip.appendChild(x); box.appendChild(chip);
    });
  }
  function fillLabelList() {
    var dlist = $("label-list"); dlist.textContent = "";
    S.labels.forEach(function (l) { var o = el("option"); o.value = l.name; dlist.appendChild(o); });
  }
  $("label-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var v = $("label-input").value.trim(); if (!v || !S.current) return;
    $("label-input").value = "";
    var labels = (S.current.labels || []).slice(); if (labels.indexOf(v) < 0) labels.push(v);
    act("labels", { labels: labels });
  });
  function renderPast(items) {
    var ul = $("past"); ul.textContent = "";
    items.filter(function (c) { return !S.current || c.id !== S.current.id; }).forEach(function (c) {
      var li = el("li", null, (c.created_at ? new Date(c.created_at * 1000).toLocaleDateString(S.lang) + " · " : "") + T("console.state." + c.status) + (c.intent ? " · " + c.intent : ""));
      li.addEventListener("click", function () { openConv(c.id); });
      ul.appendChild(li);
    });
    if (!ul.children.length) ul.appendChild(el("li", null, T("console.none")));
  }

  // ------------------------------------------------------------------ transcript search
  function searching(on) {
    $("convs").hidden = on; $("results").hidden = !on; $("search-info").hidden = !on;
    $("search-clear").hidden = !$("search").value;
  }
  function clearSearch() {
    clearTimeout(S.searchTimer); S.searchSeq += 1;
    $("search").value = ""; searching(false);
  }
  function runSearch() {
    clearTimeout(S.searchTimer);
    var q = $("search").value.trim();
    if (!q) { clearSearch(); return; }
    var seq = ++S.searchSeq, info = $("search-info");
    searching(true);
    info.className = "search-info"; info.textContent = T("console.search.busy");
    api("GET", "/search?limit=30&q=" + encodeURIComponent(q)).then(function (d) {
      if (seq !== S.searchSeq) return;  // a newer query is on its way
      var n = d.payload.length;
      info.textContent = T(n === 0 ? "console.search.none" : n === 1 ? "console.search.one" : "console.search.many", { count: n, q: q });
      renderResults(d.payload);
    }).catch(function (e) {
      if (seq !== S.searchSeq) return;
      info.className = "search-info err"; info.textContent = errText(e); $("results").textContent = "";
    });
  }
  function renderResults(hits) {
    var ul = $("results"); ul.textContent = "";
    hits.forEach(function (h) {
      var li = el("li", "hit"); li.dataset.conversation = h.conversation; li.dataset.message = h.id;
      var top = el("div", "top");
      top.appendChild(el("span", "cust", h.customer || h.conversation));
      top.appendChild(el("span", "when", new Date(h.ts * 1000).toLocaleString(S.lang || [], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" })));
      li.appendChild(top);
      var snip = el("div", "snip");
      h.highlights.forEach(function (p) { snip.appendChild(p.match ? el("mark", null, p.text) : document.createTextNode(shown(p.text))); });
      li.appendChild(snip);
      var who = h.private ? T("console.note_by", { name: author(h.author) }) : h.author.kind === "customer" ? T("console.customer") : author(h.author);
      li.appendChild(el("div", "who", who + " · " + h.conversation + (h.status ? " · " + h.status : "")));
      li.addEventListener("click", function () {
        Array.prototype.forEach.call(ul.children, function (x) { x.classList.toggle("sel", x === li); });
        openConv(h.conversation, h.id);
      });
      ul.appendChild(li);
    });
  }
  $("search-form").addEventListener("submit", function (e) { e.preventDefault(); runSearch(); });
  $("search").addEventListener("input", function () {
    clearTimeout(S.searchTimer);
    $("search-clear").hidden = !$("search").value;
    var q = $("search").value.trim();
    if (!q) { clearSearch(); return; }
    if (q.replace(/\s/g, "").length >= 2) S.searchTimer = setTimeout(runSearch, 300);  // Enter searches anything
  });
  $("search").addEventListener("keydown", function (e) { if (e.key === "Escape") clearSearch(); });
  $("search-clear").addEventListener("click", function () { clearSearch(); $("search").focus(); });

  window.kefuConsole = S;
  loadWords(browserLanguages()).then(function () { if (S.token) signIn(); else showSignin(""); });
})();
