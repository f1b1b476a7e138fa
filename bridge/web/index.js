// The index page: its words from the message catalogue in the browser's language
// (a file of its own: the pages' Content-Security-Policy allows no inline script).
fetch("/i18n?lang=" + encodeURIComponent((navigator.languages || [navigator.language]).join(","))).then(function (r) { return r.json(); }).then(function (b) {
  document.documentElement.lang = b.language;
  document.querySelectorAll("[data-i18n]").forEach(function (e) { e.textContent = b.messages[e.dataset.i18n]; });
});
