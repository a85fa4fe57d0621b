// sptelab pages: keyboard stepping (keys pressed while a step loads are counted and replayed after it
// settles), the help dialog, "copy link", keeping focus, the slider's label and the forms' hidden fields
// across htmx swaps, and saying on the page (#request-error, role="alert") when a request fails.
// In predict mode A-D choose an answer; in presentation mode 1-8 pick the enlarged panel. Both click the
// page's own buttons and links, so the keys do exactly what a click does (and nothing without them).
// The spte inspector opens as a drawer beside the tree: choosing an spte moves the focus to its heading
// once the swap settles; Escape (or its close link) closes it and gives the focus back to the spte.
// Loaded as a file (no inline script, no eval), so a strict Content-Security-Policy can forbid both.
(function () {
  "use strict";

  var NAV_KEYS = { ArrowLeft: "prev", ArrowRight: "next", Home: "first", End: "last" };
  // htmx requests not finished yet: sent, and neither failed nor swapped and settled. Until they are, the
  // page's links may not be htmx's yet (htmx takes over new content when it settles, a moment after the
  // swap): a click then would load the whole page.
  var inFlight = [];
  var swapped = [];
  // Keys pressed while a request was in flight, replayed one at a time once it settled: predict mode's
  // answer or presentation mode's panel (the latest such key) first, then a jump (Home or End), then a
  // signed count of steps (→ +1, ← −1). Home and End drop the steps queued before them; the steps
  // pressed after them count from where they land.
  var queued = { shortcut: null, jump: null, steps: 0 };
  var refocus = null;
  // The inspector drawer: whether an spte was just chosen (focus its heading after the swap), and the
  // spte (`LEVEL:SPGFN:INDEX`) whose link gets the focus back once the drawer has closed.
  var inspectChosen = false;
  var returnTo = null;
  // The step the player shows, or is on its way to: where queued steps count from.
  var heading = currentStep();

  function currentStep() {
    var position = document.querySelector("[data-step][data-steps]");
    return position ? parseInt(position.getAttribute("data-step"), 10) || 0 : 0;
  }

  function navLink(name) {
    return document.querySelector('a[data-nav="' + name + '"]');
  }

  function usable(link) {
    return link && link.getAttribute("aria-disabled") !== "true";
  }

  function stepCount() {
    var position = document.querySelector("[data-step][data-steps]");
    return position ? parseInt(position.getAttribute("data-steps"), 10) || 0 : 0;
  }

  function linkStep(link) {
    var step = new URL(link.href, window.location.href).searchParams.get("step");
    return step === null ? 0 : parseInt(step, 10) || 0;
  }

  function go(name) {
    if (name === "first" || name === "last") {
      queued.jump = name;
      queued.steps = 0;
    } else {
      queued.steps += name === "next" ? 1 : -1;
      // No queue runs past either end: a held key stops there, and the next key back counts at once.
      var from = queued.jump === "first" ? 0 : queued.jump === "last" ? stepCount() : heading;
      queued.steps = Math.max(-from, Math.min(stepCount() - from, queued.steps));
    }
    drain();
  }

  function forgetQueue() {
    queued.shortcut = null;
    queued.jump = null;
    queued.steps = 0;
  }

  function shortcutFor(key) {
    if (/^[1-9]$/.test(key)) {
      return document.querySelector('a[data-focus-key="' + key + '"]');
    }
    if (/^[a-d]$/i.test(key)) {
      return document.querySelector('button[data-choice-key="' + key.toLowerCase() + '"]');
    }
    return null;
  }

  // One queued move, if nothing is in flight. The next one waits for this one's swap to settle.
  function drain() {
    if (inFlight.length > 0) {
      return;
    }
    if (queued.shortcut) {
      var shortcut = shortcutFor(queued.shortcut);
      queued.shortcut = null;
      if (shortcut) {
        shortcut.click();
        return;
      }
    }
    var link = null;
    if (queued.jump) {
      link = navLink(queued.jump);
      queued.jump = null;
    }
    if (!usable(link) && queued.steps !== 0) {
      // No jump, or the player is already where it jumps to: on to the steps.
      link = navLink(queued.steps > 0 ? "next" : "prev");
      if (!usable(link)) {
        // At the end, or a predict-mode question waits: the rest of the queue has nowhere to go.
        forgetQueue();
        return;
      }
      queued.steps += queued.steps > 0 ? -1 : 1;
    }
    if (usable(link)) {
      heading = linkStep(link);
      if (window.htmx) {
        // Make sure htmx has taken the link over (it does so as new content settles, or as the page
        // loads): a link it has not would load the whole page.
        window.htmx.process(link);
      }
      link.click();
    }
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
    if (event.key === "Escape" && closeInspector()) {
      event.preventDefault();
      return;
    }
    // Predict mode's choices and presentation mode's panel picker: plain keys, no modifier.
    if (shortcutFor(event.key)) {
      event.preventDefault();
      // Pressed while a request loads: held (the latest one) and pressed once that has settled.
      queued.shortcut = event.key;
      drain();
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

  function openDrawer() {
    return document.querySelector("#panel-inspector.is-open[data-drawer]");
  }

  // Escape: the drawer's own close link, so closing is the same request a click makes.
  function closeInspector() {
    var drawer = openDrawer();
    var close = drawer && drawer.querySelector('a[data-action="close-inspector"]');
    if (!close) {
      return false;
    }
    returnTo = drawer.getAttribute("data-drawer");
    if (window.htmx) {
      window.htmx.process(close);
    }
    close.click();
    return true;
  }

  // `1:200:50` → the tree's link of that spte (`data-level="0x1"` …), or null when it is not drawn.
  function spteLink(param) {
    var parts = param.split(":");
    if (parts.length !== 3) {
      return null;
    }
    var hex = parts.map(function (part) { return "0x" + parseInt(part, 16).toString(16); });
    return document.querySelector('[data-spte][data-level="' + hex[0] + '"][data-sp-gfn="' + hex[1] +
      '"][data-index="' + hex[2] + '"] > [data-inspect]');
  }

  function afterInspector() {
    if (inspectChosen) {
      inspectChosen = false;
      var heading = openDrawer() && document.getElementById("h-inspector");
      if (heading) {
        heading.focus({ preventScroll: true });
      }
    }
    if (returnTo && !openDrawer()) {
      var link = spteLink(returnTo);
      returnTo = null;
      if (link) {
        link.focus();
      }
    }
  }

  // The drawer starts below the sticky header, whose height depends on the width: kept in a rule added to
  // the app's own style sheet (no style attribute on the page, and nothing a Content-Security-Policy that
  // forbids inline style would have to refuse).
  var headerRule = null;

  function setHeaderHeight() {
    var header = document.querySelector("header.site");
    if (!header) {
      return;
    }
    if (!headerRule) {
      var sheets = document.styleSheets;
      for (var i = 0; i < sheets.length && !headerRule; i++) {
        if (sheets[i].href && /\/static\/app\.css(\?|$)/.test(new URL(sheets[i].href).pathname + "?")) {
          try {
            headerRule = sheets[i].cssRules[sheets[i].insertRule(":root {}", sheets[i].cssRules.length)];
          } catch (error) {
            return;
          }
        }
      }
      if (!headerRule) {
        return;
      }
    }
    headerRule.style.setProperty("--header-height", header.offsetHeight + "px");
  }

  setHeaderHeight();
  window.addEventListener("resize", setHeaderHeight);

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
    } else if (target.closest("[data-inspect]")) {
      inspectChosen = true;
    } else if (target.closest('[data-action="close-inspector"]')) {
      var drawer = openDrawer();
      returnTo = drawer ? drawer.getAttribute("data-drawer") : null;
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

  document.addEventListener("htmx:beforeRequest", function (event) {
    inFlight.push(event.detail.xhr);
    refocus = focusKey(document.activeElement);
  });

  function settled(xhr) {
    var at = inFlight.indexOf(xhr);
    if (at === -1) {
      return;
    }
    inFlight.splice(at, 1);
    var was = swapped.indexOf(xhr);
    if (was !== -1) {
      swapped.splice(was, 1);
    }
    // After every htmx:afterSettle handler of this swap has run.
    window.setTimeout(drain, 0);
  }

  document.addEventListener("htmx:afterSwap", function (event) {
    var xhr = event.detail.xhr;
    if (inFlight.indexOf(xhr) !== -1 && swapped.indexOf(xhr) === -1) {
      swapped.push(xhr);
    }
  });

  document.addEventListener("htmx:afterSettle", function (event) {
    heading = currentStep();
    syncSlider();
    setHeaderHeight();
    afterInspector();
    settled(event.detail.xhr);
  });

  // The page's one live region (#announcer, never swapped) says each step's outcome: the server's line
  // in the swapped position block ([data-announce]), copied once the swap has settled. Only a changed
  // line is written, so selecting an spte at the same step says nothing twice.
  function announce() {
    var region = document.getElementById("announcer");
    var line = document.querySelector("[data-announce]");
    if (!region || !line) {
      return;
    }
    var text = line.textContent.trim();
    if (text && text !== region.textContent) {
      region.textContent = text;
    }
  }

  document.addEventListener("htmx:afterSettle", announce);

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

  // The slider names its step for a screen reader; a swap that leaves the slider in place (the slider
  // asked) or moves the player by another control must not leave the old number there.
  function syncSlider() {
    var slider = document.getElementById("step-slider");
    var position = document.querySelector("[data-step][data-steps]");
    if (!slider || !position) {
      return;
    }
    var step = position.getAttribute("data-step");
    var total = position.getAttribute("data-steps");
    if (document.activeElement !== slider) {
      slider.value = step;
    }
    slider.setAttribute("aria-valuetext", "step " + slider.value + " of " + total);
  }

  document.addEventListener("input", function (event) {
    var target = event.target;
    if (target && target.id === "step-slider") {
      var total = target.getAttribute("max");
      target.setAttribute("aria-valuetext", "step " + target.value + " of " + total);
    }
  });

  // A request htmx could not complete is said on the page, in the error region (role="alert"): the
  // server's own message when it sent its error page (or the API's {"detail"}), else what went wrong.
  function serverMessage(xhr) {
    var status = xhr.status;
    var type = (xhr.getResponseHeader("Content-Type") || "").toLowerCase();
    var text = typeof xhr.responseText === "string" ? xhr.responseText : "";
    var title = "";
    var message = "";
    try {
      if (type.indexOf("application/json") !== -1) {
        var body = JSON.parse(text);
        message = body && typeof body.detail === "string" ? body.detail : "";
      } else if (type.indexOf("text/html") !== -1) {
        // DOMParser's document runs no script and loads nothing.
        var doc = new DOMParser().parseFromString(text, "text/html");
        var found = doc.querySelector("[data-error-message]");
        message = found ? found.textContent.trim() : "";
        var heading = doc.querySelector(".error-page h1");
        title = heading ? heading.textContent.replace(/\s+/g, " ").trim() : "";
      }
    } catch (error) {
      message = "";
    }
    var head = title || (status + (xhr.statusText ? " " + xhr.statusText : ""));
    return head + ": " + (message || "the server refused this request") + ".";
  }

  function showError(text, status) {
    var region = document.getElementById("request-error");
    if (!region) {
      return;
    }
    region.textContent = "";
    var line = document.createElement("p");
    line.className = "request-error-text";
    line.setAttribute("data-request-error-message", "");
    line.textContent = text + " The page still shows the state before it.";
    region.appendChild(line);
    var close = document.createElement("button");
    close.type = "button";
    close.className = "button small";
    close.setAttribute("data-action", "dismiss-error");
    close.textContent = "Dismiss";
    region.appendChild(close);
    region.setAttribute("data-request-error", status === null ? "" : String(status));
    region.hidden = false;
  }

  function clearError() {
    var region = document.getElementById("request-error");
    if (region && !region.hidden) {
      region.hidden = true;
      region.textContent = "";
      region.setAttribute("data-request-error", "");
    }
  }

  document.addEventListener("click", function (event) {
    var target = event.target instanceof Element ? event.target : null;
    if (target && target.closest('[data-action="dismiss-error"]')) {
      event.preventDefault();
      clearError();
    }
  });

  document.addEventListener("htmx:responseError", function (event) {
    showError(serverMessage(event.detail.xhr), event.detail.xhr.status);
  });
  document.addEventListener("htmx:sendError", function () {
    showError("The server could not be reached: check the connection, then try again.", null);
  });
  document.addEventListener("htmx:timeout", function () {
    showError("The server took too long to answer.", null);
  });
  document.addEventListener("htmx:swapError", function () {
    showError("The page could not show the server's answer; reload it.", null);
  });
  document.addEventListener("htmx:onLoadError", function () {
    showError("The page could not show the server's answer; reload it.", null);
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var detail = event.detail;
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
    if (!detail.successful) {
      // The queue was counted from a page that did not move: drop it rather than guess.
      forgetQueue();
      inspectChosen = false;
      returnTo = null;
      heading = currentStep();
      settled(detail.xhr);
      return;
    }
    clearError();
    if (swapped.indexOf(detail.xhr) === -1) {
      settled(detail.xhr);  // nothing was swapped, so nothing will settle
    }
  });
})();
