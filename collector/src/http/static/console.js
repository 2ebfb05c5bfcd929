// The SOS console's only script (served from this origin; the CSP allows no other).
// Live page: an event stream says when alerts change; the list is then fetched again, as HTML
// the server rendered and escaped, and put in place. Sound is armed by a click (browsers block
// autoplay); until then a warning stays visible.
"use strict";
(function () {
  var region = document.getElementById("live-region");
  if (!region) { return; }
  var warning = document.getElementById("sound-warning");
  var status = document.getElementById("connection");
  var audio = null;

  function beep(seconds) {
    if (!audio) { return; }
    var osc = audio.createOscillator();
    var gain = audio.createGain();
    osc.type = "square";
    osc.frequency.value = 880;
    gain.gain.value = 0.2;
    osc.connect(gain);
    gain.connect(audio.destination);
    osc.start();
    osc.stop(audio.currentTime + seconds);
  }

  document.getElementById("arm-sound").addEventListener("click", function () {
    var Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) { return; }
    audio = new Ctx();
    audio.resume();
    warning.hidden = true;
    document.body.setAttribute("data-sound", "armed");
    beep(0.1);
  });

  function unacked() {
    var live = document.getElementById("live");
    return live ? Number(live.getAttribute("data-unacked")) || 0 : 0;
  }

  function setTitle(n) {
    document.title = (n > 0 ? "(" + n + ") " : "") + "SOS — live alerts";
  }

  var seen = unacked();
  setTitle(seen);

  function refresh() {
    fetch("/alerts/live", { credentials: "same-origin", cache: "no-store" }).then(function (r) {
      if (r.redirected || !r.ok) { throw new Error("HTTP " + r.status); }
      return r.text();
    }).then(function (html) {
      var t = document.createElement("template");
      t.innerHTML = html;
      var fresh = t.content.getElementById("live");
      if (!fresh) { return; }
      var old = document.getElementById("live");
      old.parentNode.replaceChild(document.importNode(fresh, true), old);
      var n = unacked();
      setTitle(n);
      if (n > seen) { beep(0.6); }
      seen = n;
    }).catch(function (e) {
      status.textContent = "Cannot refresh the list (" + e.message + "); reload the page.";
      status.className = "error";
    });
  }

  var events = new EventSource("/events");
  events.addEventListener("open", function () {
    status.textContent = "Live: new alerts appear here without reloading.";
    status.className = "muted";
  });
  events.addEventListener("change", refresh);
  events.addEventListener("error", function () {
    status.textContent = "Connection to the collector lost; retrying…";
    status.className = "error";
  });
})();
