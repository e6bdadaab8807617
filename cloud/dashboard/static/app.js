// parkwatch dashboard: the only script of our own. Everything works without it; it adds
// local times, the CSRF header on htmx requests, and keeps focus sane after partial refreshes.
(function () {
  "use strict";
  var fmt = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"
  });
  var hm = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
  var md = new Intl.DateTimeFormat(undefined, { month: "2-digit", day: "2-digit" });
  function localAxes(root) {
    var nodes = (root || document).querySelectorAll("svg text[data-ts]");
    for (var i = 0; i < nodes.length; i++) {
      var d = new Date(1000 * Number(nodes[i].getAttribute("data-ts")));
      var span = Number(nodes[i].getAttribute("data-span"));
      nodes[i].textContent = span <= 2 * 86400 ? hm.format(d) : md.format(d);
    }
    var notes = (root || document).querySelectorAll(".axis-zone");
    for (var j = 0; j < notes.length; j++) { notes[j].textContent = "axis times in your zone"; }
  }
  function localTimes(root) {
    localAxes(root);
    var nodes = (root || document).querySelectorAll("time[datetime]:not([data-local])");
    for (var i = 0; i < nodes.length; i++) {
      var d = new Date(nodes[i].getAttribute("datetime"));
      if (!isNaN(d)) {
        nodes[i].textContent = fmt.format(d);
        nodes[i].setAttribute("data-local", "1");
        nodes[i].title = nodes[i].getAttribute("datetime");
      }
    }
  }
  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    var tz = document.getElementById("tzname");
    if (tz) { tz.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone; }
  });
  document.addEventListener("htmx:configRequest", function (ev) {
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) { ev.detail.headers["X-CSRF-Token"] = meta.getAttribute("content"); }
  });
  document.addEventListener("htmx:afterSwap", function (ev) { localTimes(ev.target); });
  // A live region refreshing under a keyboard user must not steal focus or scroll.
  document.addEventListener("htmx:beforeSwap", function (ev) {
    var active = document.activeElement;
    if (active && ev.target.contains(active) && active.id) {
      ev.detail.target.setAttribute("data-refocus", active.id);
    }
  });
  document.addEventListener("htmx:afterSettle", function (ev) {
    var id = ev.target.getAttribute && ev.target.getAttribute("data-refocus");
    if (id) {
      var el = document.getElementById(id);
      if (el) { el.focus(); }
      ev.target.removeAttribute("data-refocus");
    }
  });
})();
