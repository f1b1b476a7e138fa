/* kefu chat widget. One tag on any page:
 *
 *   <script src="https://support.example.com/widget.js" data-site="PUBLIC_TOKEN" async></script>
 *
 * Optional attributes: data-identity-id + data-identity-hash (identity validation:
 * hex HMAC-SHA256 of the id under the site's identity_secret, computed by the site's
 * backend), data-name, data-email, data-open="true" (start open), data-lang="zh-CN" or "en"
 * (the widget's language; without it the visitor's browser languages, navigator.languages, pick).
 *
 * Every word it shows comes from the server's message catalogue (GET /i18n?lang=...,
 * kefu/locales/): elements carry data-i18n="key" (their text) or data-i18n-attr="attr:key"
 * (placeholder, title, aria-label). The language goes to the server on auth, so the
 * desk's system messages and the bot's answers come in it too.
 *
 * Plain JS, no build step, no dependencies. Everything lives in a shadow root so the
 * host page's CSS cannot break the widget and ours cannot leak out. Protocol:
 * docs/chat-protocol.md. State kept across reloads in localStorage: the visitor token
 * (who we are) and the last messages shown (so a reload paints at once, then the
 * server's history replaces them).
 */
(function () {
  "use strict";
  var script = document.currentScript || document.querySelector("script[data-site][src*='widget.js']");
  if (!script || window.__kefuWidget) return;
  var ds = script.dataset;
  var site = ds.site || "demo";
  var base = new URL(script.src, location.href).origin;
  var KEY = "kefu." + site + ".";
  var store = {
    get: function (k, d) { try { var v = localStorage.getItem(KEY + k); return v === null ? d : JSON.parse(v); } catch (e) { return d; } },
    set: function (k, v) { try { localStorage.setItem(KEY + k, JSON.stringify(v)); } catch (e) { /* private mode */ } }
  };

  // Bidirectional overrides and invisible characters shown as visible markers (as the console does).
  var DECEPTIVE = /[\u202a-\u202e\u2066-\u2069\u200b\u200e\u200f\u061c\u2060\ufeff\u180e]/g;
  function shown(text) {
    return String(text).replace(DECEPTIVE, function (c) {
      return "\u27e6U+" + ("000" + c.charCodeAt(0).toString(16).toUpperCase()).slice(-4) + "\u27e7";
    });
  }

  var state = {
    lang: null, words: {}, cfg: null, ws: null, ready: false, open: ds.open === "true" || store.get("open", false),
    conv: null, messages: store.get("history", []), pending: {}, me: store.get("visitor_id", null),
    queue: null, typingTimer: null, agentTyping: null, readUpTo: store.get("read_by_agent", null),
    backoff: 1000, refs: 0, unread: 0, lastSentTyping: false, pingTimer: null, status: "connecting"
  };

  // ------------------------------------------------------------------ DOM
  var host = document.createElement("div");
  host.id = "kefu-widget";
  host.style.cssText = "position:fixed;right:20px;bottom:20px;z-index:2147483000;";
  var root = host.attachShadow({ mode: "open" });
  root.innerHTML =
    '<style>' +
    ':host{all:initial}*{box-sizing:border-box;font-family:system-ui,-apple-system,"Segoe UI",Roboto,"PingFang SC","Microsoft YaHei","Noto Sans CJK SC","WenQuanYi Zen Hei",sans-serif}' +
    '.bubble{width:60px;height:60px;border-radius:50%;border:0;cursor:pointer;background:var(--c,#1f6feb);color:#fff;box-shadow:0 6px 20px rgba(0,0,0,.25);display:flex;align-items:center;justify-content:center;margin-left:auto;position:relative}' +
    '.bubble svg{width:28px;height:28px;fill:#fff}' +
    '.badge{position:absolute;top:-4px;right:-4px;background:#e5484d;color:#fff;border-radius:10px;font-size:12px;padding:1px 6px;display:none}' +
    '.panel{width:360px;max-width:calc(100vw - 40px);height:520px;max-height:calc(100vh - 110px);background:#fff;border-radius:14px;box-shadow:0 12px 40px rgba(0,0,0,.25);display:none;flex-direction:column;overflow:hidden;margin-bottom:14px}' +
    '.open .panel{display:flex}' +
    '.head{background:var(--c,#1f6feb);color:#fff;padding:14px 16px}' +
    '.head h2{margin:0;font-size:16px;font-weight:600}.head .sub{font-size:12px;opacity:.9;margin-top:3px}' +
    '.head .x{float:right;background:none;border:0;color:#fff;font-size:20px;cursor:pointer;line-height:1}' +
    '.list{flex:1;overflow-y:auto;padding:12px;background:#f6f7f9;display:flex;flex-direction:column;gap:6px}' +
    '.msg{max-width:78%;padding:8px 11px;border-radius:12px;font-size:14px;line-height:1.35;white-space:pre-wrap;word-wrap:break-word}' +
    '.msg.them{background:#fff;color:#1c2024;align-self:flex-start;border:1px solid #e4e6ea;border-bottom-left-radius:4px}' +
    '.msg.me{background:var(--c,#1f6feb);color:#fff;align-self:flex-end;border-bottom-right-radius:4px}' +
    '.msg.pending{opacity:.6}.who{font-size:11px;color:#60646c;margin:2px 4px}.who.me{align-self:flex-end}' +
    '.meta{font-size:11px;color:#8b8d98;align-self:flex-end;margin-top:-2px}' +
    '.sys{align-self:center;font-size:12px;color:#60646c;text-align:center;padding:4px 8px}' +
    '.greet{align-self:flex-start;background:#fff;border:1px solid #e4e6ea;color:#1c2024}' +
    '.typing{font-size:12px;color:#60646c;padding:0 14px 6px;height:18px;background:#f6f7f9}' +
    '.queue{font-size:12px;background:#fff8e6;color:#6b4f00;padding:6px 14px;display:none;border-top:1px solid #f3e2b3}' +
    'form{display:flex;border-top:1px solid #e4e6ea;background:#fff}' +
    'textarea{flex:1;border:0;resize:none;padding:12px;font-size:14px;height:48px;outline:none}' +
    'button.send{border:0;background:none;color:var(--c,#1f6feb);font-weight:600;padding:0 16px;cursor:pointer;font-size:14px}' +
    'button.send:disabled{color:#b0b4ba;cursor:default}' +
    '</style>' +
    '<div class="wrap">' +
    '<section class="panel" role="dialog" data-i18n-attr="aria-label:widget.dialog">' +
    '<header class="head"><button class="x" data-i18n-attr="aria-label:widget.close;title:widget.close">&times;</button><h2 class="title"></h2><div class="sub status" data-i18n="widget.connecting"></div></header>' +
    '<div class="list" aria-live="polite"></div>' +
    '<div class="typing"></div>' +
    '<div class="queue"></div>' +
    '<form><textarea data-i18n-attr="placeholder:widget.placeholder;aria-label:widget.message"></textarea><button class="send" type="submit" data-i18n="widget.send"></button></form>' +
    '</section>' +
    '<button class="bubble" data-i18n-attr="aria-label:widget.open;title:widget.bubble"><svg viewBox="0 0 24 24"><path d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H8l-4 4V6a2 2 0 0 1 2-2z"/></svg><span class="badge"></span></button>' +
    '</div>';
  var $ = function (s) { return root.querySelector(s); };

  // ------------------------------------------------------------------ words
  function T(key, vals) {
    var t = state.words[key];
    if (t === undefined) return key;
    return t.replace(/\{([A-Za-z_][A-Za-z0-9_]*)\}/g, function (m, k) { return vals && k in vals ? String(vals[k]) : m; });
  }
  function applyWords() {
    Array.prototype.forEach.call(root.querySelectorAll("[data-i18n]"), function (e) { e.textContent = T(e.dataset.i18n); });
    Array.prototype.forEach.call(root.querySelectorAll("[data-i18n-attr]"), function (e) {
      e.dataset.i18nAttr.split(";").forEach(function (p) { var kv = p.split(":"); e.setAttribute(kv[0], T(kv[1])); });
    });
    host.setAttribute("lang", state.lang);
  }
  function wantedLanguages() {
    if (ds.lang) return [ds.lang];
    return (navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || ""]).slice(0, 10);
  }
  var wrap = $(".wrap"), list = $(".list"), input = $("textarea"), form = $("form");

  function setOpen(v) {
    state.open = v;
    store.set("open", v);
    wrap.classList.toggle("open", v);
    if (v) { state.unread = 0; badge(); input.focus(); sendRead(); scrollDown(); }
  }
  $(".bubble").addEventListener("click", function () { setOpen(!state.open); });
  $(".x").addEventListener("click", function () { setOpen(false); });

  function badge() {
    var b = $(".badge");
    b.textContent = String(state.unread);
    b.style.display = state.unread ? "block" : "none";
  }
  function setStatus(text) { $(".status").textContent = text; }
  function scrollDown() { list.scrollTop = list.scrollHeight; }

  // ------------------------------------------------------------------ rendering
  function render() {
    list.textContent = "";
    var g = document.createElement("div");
    g.className = "msg greet";
    g.textContent = (state.cfg && state.cfg.greeting) || T("widget.greeting");
    list.appendChild(g);
    var lastMine = null, lastMineEl = null;
    state.messages.forEach(function (m) {
      var mine = m.author.kind === "customer";
      if (!mine && m.author.kind !== "system") {
        var who = document.createElement("div");
        who.className = "who";
        who.textContent = m.author.kind === "bot" ? T("widget.assistant") : (shown(m.author.name || "") || (m.author.kind === "agent" ? T("widget.agent") : ""));
        if (who.textContent) list.appendChild(who);
      }
      var el = document.createElement("div");
      el.className = "msg " + (m.author.kind === "system" ? "sys" : mine ? "me" : "them");
      el.textContent = shown(m.text);
      el.dataset.id = m.id;
      list.appendChild(el);
      if (mine) { lastMine = m; lastMineEl = el; }
    });
    Object.keys(state.pending).forEach(function (ref) {
      var el = document.createElement("div");
      el.className = "msg me pending";
      el.textContent = state.pending[ref];
      list.appendChild(el);
    });
    if (lastMine && state.readUpTo !== null && seqOf(state.readUpTo) >= seqOf(lastMine.id)) {
      var r = document.createElement("div");
      r.className = "meta read";
      r.textContent = T("widget.read");
      lastMineEl.insertAdjacentElement("afterend", r);  // under the visitor's last message
    }
    scrollDown();
  }

  function seqOf(id) { var s = String(id); return Number(s.slice(s.lastIndexOf(":") + 1)) || 0; }
  function remember() { store.set("history", state.messages.slice(-50)); }

  function addMessage(m) {
    if (state.conv && m.conversation && m.conversation !== state.conv) {
      // a new conversation on our thread: start a fresh view
      state.messages = [];
    }
    if (m.conversation) state.conv = m.conversation;
    for (var i = 0; i < state.messages.length; i++) if (state.messages[i].id === m.id) return;
    if (m.author.kind === "customer") {
      for (var ref in state.pending) if (state.pending[ref] === m.text) { delete state.pending[ref]; break; }
    } else {
      state.agentTyping = null; showTyping();
      if (!state.open || document.hidden) { state.unread++; badge(); }
    }
    state.messages.push(m);
    state.messages.sort(function (a, b) { return seqOf(a.id) - seqOf(b.id); });
    remember();
    render();
    if (m.author.kind !== "customer") sendRead();
  }

  function showTyping() {
    var t = $(".typing");
    t.textContent = state.agentTyping ? T("widget.typing", { name: state.agentTyping }) : "";
  }

  function showQueue() {
    var q = $(".queue");
    if (state.queue && state.queue.position > 0) {
      q.textContent = state.queue.eta_s
        ? T("widget.queue_eta", { position: state.queue.position, minutes: Math.max(1, Math.round(state.queue.eta_s / 60)) })
        : T("widget.queue", { position: state.queue.position });
      q.style.display = "block";
    } else {
      q.style.display = "none";
    }
  }

  // ------------------------------------------------------------------ wire
  function send(frame) {
    if (state.ws && state.ws.readyState === 1) { state.ws.send(JSON.stringify(frame)); return true; }
    return false;
  }
  function nextRef() { state.refs += 1; return "w" + Date.now().toString(36) + state.refs; }

  function sendRead() {
    if (!state.open || document.hidden || !state.conv) return;
    var last = null;
    state.messages.forEach(function (m) { if (m.author.kind !== "customer") last = m.id; });
    if (last !== null && last !== state.lastRead) { state.lastRead = last; send({ type: "read", conversation: state.conv, up_to: last }); }
  }

  function connect() {
    var url = state.cfg.ws_url + state.cfg.chat_path;
    var ws = new WebSocket(url);
    state.ws = ws;
    setStatus(T("widget.connecting"));
    ws.onopen = function () {
      state.backoff = 1000;
      var auth = { type: "auth", role: "visitor", site: site, profile: { page: location.href.slice(0, 2000), user_agent: navigator.userAgent.slice(0, 500), locale: navigator.language || "", language: state.lang } };
      if (ds.identityId && ds.identityHash) {
        auth.identity = { id: ds.identityId, hash: ds.identityHash };
        if (ds.name) auth.identity.name = ds.name;
        if (ds.email) auth.identity.email = ds.email;
      } else {
        var tok = store.get("visitor_token", null);
        if (tok) auth.visitor_token = tok;
        if (ds.name) auth.profile.name = ds.name;
        if (ds.email) auth.profile.email = ds.email;
      }
      ws.send(JSON.stringify(auth));
      clearInterval(state.pingTimer);
      state.pingTimer = setInterval(function () { send({ type: "ping" }); }, 25000);
    };
    ws.onmessage = function (ev) {
      var f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      handle(f);
    };
    ws.onclose = function () {
      state.ready = false;
      clearInterval(state.pingTimer);
      $(".send").disabled = true;
      var wait = state.backoff;
      state.backoff = Math.min(state.backoff * 2, 30000);
      setStatus(T("widget.reconnecting", { seconds: Math.round(wait / 1000) }));
      setTimeout(connect, wait + Math.random() * 300);
    };
  }

  function handle(f) {
    switch (f.type) {
      case "ready":
        state.ready = true;
        if (state.me && state.me !== f.id) { state.messages = []; remember(); }
        state.me = f.id;
        store.set("visitor_id", f.id);
        if (f.visitor_token) store.set("visitor_token", f.visitor_token);
        $(".send").disabled = false;
        setStatus(T("widget.reply_time"));
        state.conv = f.conversation ? f.conversation.id : null;
        if (state.conv) send({ type: "history", conversation: state.conv, limit: 50, ref: "hist" });
        else { state.messages = []; remember(); render(); }
        // anything typed while offline goes out now
        Object.keys(state.pending).forEach(function (ref) { send({ type: "message", text: state.pending[ref], ref: ref }); });
        break;
      case "history":
        state.messages = f.messages.filter(function (m) { return !m.private; });
        remember();
        render();
        sendRead();
        break;
      case "ack":
        // our own message as stored (customer messages are not echoed on the out topic)
        if (f.message) { delete state.pending[f.ref]; addMessage(f.message); }
        break;
      case "message":
        addMessage(f.message);
        break;
      case "typing":
        if (f.author.kind !== "customer") {
          state.agentTyping = f.on ? (f.author.kind === "bot" ? T("widget.assistant") : (f.author.name || T("widget.agent"))) : null;
          showTyping();
          clearTimeout(state.agentTypingTimer);
          if (f.on) state.agentTypingTimer = setTimeout(function () { state.agentTyping = null; showTyping(); }, 8000);
        }
        break;
      case "read":
        if (f.author.kind !== "customer") { state.readUpTo = f.up_to; store.set("read_by_agent", f.up_to); render(); }
        break;
      case "queue":
        state.queue = f;
        showQueue();
        break;
      case "conversation":
        state.conv = f.conversation.id;
        if (f.conversation.status === "assigned") { state.queue = null; showQueue(); setStatus(T("widget.agent_joined")); }
        else if (f.conversation.status === "resolved") { setStatus(T("widget.resolved")); state.queue = null; showQueue(); }
        else if (f.conversation.status === "queued") setStatus(T("widget.waiting"));
        break;
      case "error":
        if (f.ref && state.pending[f.ref]) { delete state.pending[f.ref]; render(); }
        if (f.code === "auth_failed") { store.set("visitor_token", null); }
        // people read the catalogue's words for the code; the server's text is for developers
        sysNote(state.words["widget.error." + f.code] !== undefined ? T("widget.error." + f.code) : T("widget.error.generic"));
        if (window.console) console.warn("kefu widget:", f.code, f.message);
        break;
    }
  }

  function sysNote(text) {
    var el = document.createElement("div");
    el.className = "sys";
    el.textContent = text;
    list.appendChild(el);
    scrollDown();
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var text = input.value.trim();
    if (!text) return;
    var ref = nextRef();
    state.pending[ref] = text;
    input.value = "";
    send({ type: "message", text: text, ref: ref });
    stopTyping();
    render();
  });
  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit ? form.requestSubmit() : form.dispatchEvent(new Event("submit")); }
  });
  input.addEventListener("input", function () {
    if (!state.lastSentTyping && input.value) { state.lastSentTyping = true; send({ type: "typing", on: true }); }
    clearTimeout(state.typingTimer);
    state.typingTimer = setTimeout(stopTyping, 3000);
  });
  function stopTyping() {
    clearTimeout(state.typingTimer);
    if (state.lastSentTyping) { state.lastSentTyping = false; send({ type: "typing", on: false }); }
  }
  document.addEventListener("visibilitychange", sendRead);

  // ------------------------------------------------------------------ start
  function start() {
    document.body.appendChild(host);
    setOpen(state.open);
    function get(path) {
      return fetch(base + path).then(function (r) { if (!r.ok) throw new Error(path + ": HTTP " + r.status); return r.json(); });
    }
    var words = get("/i18n?lang=" + encodeURIComponent(wantedLanguages().join(","))).then(function (body) {
      state.lang = body.language;
      state.words = body.messages;
      applyWords();
    });
    Promise.all([get("/api/v1/widget/config?website_token=" + encodeURIComponent(site)), words])
      .then(function (r) {
        state.cfg = r[0].data;
        host.style.setProperty("--c", state.cfg.color || "#1f6feb");
        root.host.style.setProperty("--c", state.cfg.color || "#1f6feb");
        $(".title").textContent = state.cfg.title || T("widget.title");
        render();
        connect();
      })
      .catch(function (e) { if (state.lang) setStatus(T("widget.unavailable")); if (window.console) console.error("kefu widget:", e); });
  }
  window.__kefuWidget = { state: state, open: function () { setOpen(true); }, close: function () { setOpen(false); } };
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
})();
