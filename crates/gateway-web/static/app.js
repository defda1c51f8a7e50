// BluesMinds dashboard: small progressive enhancements. Every page works without them.
"use strict";

// A copy button: data-copy names the element whose value (a field) or text (a code block)
// goes to the clipboard.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.getAttribute("data-copy"));
  if (!source) return;
  const text = "value" in source ? source.value : source.textContent;
  if (source.select) source.select();
  const label = button.textContent;
  const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = label; }, 2000); };
  const fallback = () => {
    if (!source.select) return;
    source.select();
    if (document.execCommand("copy")) done();
  };
  if (navigator.clipboard) {
    navigator.clipboard.writeText(text).then(done, fallback);
  } else {
    fallback();
  }
});

// Confirmation before a destructive post; a busy button while a form is on its way.
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
    return;
  }
  const button = form.querySelector("button[type=submit]");
  if (button) {
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
  }
});

// Live regions: an element with data-refresh="N" is fetched again from this page every N
// seconds while the tab is visible, and replaced in place (the rest of the page, forms being
// filled in included, stays as it is).
for (const live of document.querySelectorAll("[data-refresh]")) {
  const every = Math.max(5, Number(live.getAttribute("data-refresh")) || 0) * 1000;
  setInterval(async () => {
    if (document.hidden || !live.id) return;
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById(live.id);
      const current = document.getElementById(live.id);
      if (fresh && current) current.replaceWith(fresh);
    } catch (_) {
      // Offline for a moment: the next round tries again.
    }
  }, every);
}
