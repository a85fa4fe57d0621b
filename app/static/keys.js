// sptelab pages: keyboard stepping, the help dialog, "copy link", and keeping focus across htmx swaps.
// In predict mode A-D choose an answer; in presentation mode 1-8 pick the enlarged panel. Both click the
// page's own buttons and links, so the keys do exactly what a click does (and nothing without them).
// Loaded as a file (no inline script, no eval), so a strict Content-Security-Policy can forbid both.
(function () {
  "use strict";

  var NAV_KEYS = { ArrowLeft: "prev", ArrowRight: "next", Home: "first", End: "last" };
  var busy = 0;
  var pending = null;
  var refocus = null;

  function navLink(name) {
    return document.querySelector('a[data-nav="' + name + '"]');
  }

  function go(name) {
    var link = navLink(name);
    if (!link || link.getAttribute("aria-disabled") === "true") {
      return;
    }
    if (busy > 0) {
      // Hold only the latest key: stepping runs as fast as the server answers, never behind it.
      pending = name;
      return;
    }
    link.click();
  }

  function toggleHelp() {
    var dialog = document.getElementById("help");
    if (!dialog) {
      return;
    }
    if (dialog.open) {
      dialog.close();
    } else if (typeof dialog.showModal === "function") {
      dialog.showModal();
    } else {
      dialog.setAttribute("open", "");
    }
  }

  function isTyping(el) {
    if (!el) {
      return false;
    }
    var tag = el.tagName;
    if (tag === "TEXTAREA" || tag === "SELECT" || el.isContentEditable) {
      return true;
    }
    return tag === "INPUT" && ["range", "button", "submit", "checkbox", "radio", "file"].indexOf(el.type) === -1;
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.defaultPrevented) {
      return;
    }
    var active = document.activeElement;
    if (isTyping(active)) {
      return;
    }
    if (event.key === "?") {
      event.preventDefault();
      toggleHelp();
      return;
    }
    var dialog = document.getElementById("help");
    if (dialog && dialog.open) {
      return;
    }
    // Predict mode's choices and presentation mode's panel picker: plain keys, no modifier.
    var shortcut = null;
    if (/^[1-9]$/.test(event.key)) {
      shortcut = document.querySelector('a[data-focus-key="' + event.key + '"]');
    } else if (/^[a-d]$/i.test(event.key)) {
      shortcut = document.querySelector('button[data-choice-key="' + event.key.toLowerCase() + '"]');
    }
    if (shortcut) {
      event.preventDefault();
      if (busy === 0) {
        shortcut.click();
      }
      return;
    }
    var name = NAV_KEYS[event.key];
    // A focused slider moves itself with the arrow keys; let it.
    if (!name || (active && active.type === "range")) {
      return;
    }
    event.preventDefault();
    go(name);
  });

  function copyLink() {
    var input = document.getElementById("share-url");
    var status = document.getElementById("copy-status");
    if (!input) {
      return;
    }
    function say(text) {
      if (status) {
        status.textContent = text;
      }
    }
    function fallback() {
      input.focus();
      input.select();
      say("Selected: press Ctrl+C (⌘C on a Mac) to copy.");
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(function () {
        say("✓ Link copied.");
      }, fallback);
    } else {
      fallback();
    }
  }

  document.addEventListener("click", function (event) {
    var target = event.target instanceof Element ? event.target : null;
    if (!target) {
      return;
    }
    if (target.closest('[data-action="copy-link"]')) {
      event.preventDefault();
      copyLink();
    } else if (target.closest('[data-action="help"]')) {
      event.preventDefault();
      toggleHelp();
    }
  });

  document.addEventListener("focusin", function (event) {
    var target = event.target;
    if (target && target.id === "share-url") {
      target.select();
    }
  });

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target && target.matches && target.matches("select[data-autosubmit]") && target.form) {
      target.form.requestSubmit();
    }
  });

  // Remember what had the focus, so that the same control has it again after the swap replaced it.
  function focusKey(el) {
    if (!el || el === document.body) {
      return null;
    }
    var nav = el.getAttribute("data-nav");
    if (nav) {
      return 'a[data-nav="' + nav + '"]';
    }
    if (el.hasAttribute("data-inspect")) {
      var spte = el.closest("[data-spte]");
      if (spte) {
        return '[data-spte][data-level="' + spte.getAttribute("data-level") + '"][data-sp-gfn="' +
          spte.getAttribute("data-sp-gfn") + '"][data-index="' + spte.getAttribute("data-index") + '"] > a[data-inspect]';
      }
    }
    return el.id ? "#" + el.id : null;
  }

  document.addEventListener("htmx:beforeRequest", function () {
    busy += 1;
    refocus = focusKey(document.activeElement);
  });

  // Forms that swaps leave in place carry the state in hidden fields: keep those in line with the
  // address bar, which htmx has just updated. data-sync names the fields a form keeps. The score is the
  // exception: the address bar's does not count the answer in it yet, the page's data-score-next does.
  function syncValue(params, name) {
    if (name === "step") {
      return params.get("step") || "0";
    }
    if (name === "score") {
      var carrier = document.querySelector("[data-score-next]");
      return carrier ? carrier.getAttribute("data-score-next") : null;
    }
    return params.get(name);
  }

  function syncForms() {
    var params = new URLSearchParams(window.location.search);
    document.querySelectorAll("form[data-sync]").forEach(function (form) {
      form.getAttribute("data-sync").split(" ").forEach(function (name) {
        var value = syncValue(params, name);
        var field = form.querySelector('input[type="hidden"][name="' + name + '"]');
        if (value === null) {
          if (field) {
            field.remove();
          }
          return;
        }
        if (!field) {
          field = document.createElement("input");
          field.type = "hidden";
          field.name = name;
          form.appendChild(field);
        }
        field.value = value;
      });
    });
  }

  // The server writes the share link without scheme and host unless it was told its public address
  // (SPTELAB_PUBLIC_URL): it never trusts a request's Host header. Made whole here from the address bar.
  function wholeShareLink() {
    var input = document.getElementById("share-url");
    if (input && input.value.charAt(0) === "/") {
      input.value = new URL(input.value, window.location.href).href;
    }
  }

  wholeShareLink();

  document.addEventListener("htmx:afterRequest", function () {
    busy = Math.max(0, busy - 1);
    syncForms();
    wholeShareLink();
    var active = document.activeElement;
    if (refocus && (!active || active === document.body || !document.body.contains(active))) {
      var again = document.querySelector(refocus);
      if (again) {
        again.focus({ preventScroll: true });
      }
    }
    refocus = null;
    if (busy === 0 && pending) {
      var next = pending;
      pending = null;
      go(next);
    }
  });
})();
