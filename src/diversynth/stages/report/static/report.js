// Clicking a thumbnail shows its prompt, seed and CLIP score. Text goes in through
// textContent only: nothing from a prompt or a class name is ever parsed as HTML.
"use strict";
document.addEventListener("click", (event) => {
  const thumb = event.target.closest(".thumb");
  const panel = document.getElementById("detail");
  if (!thumb || !panel) return;
  document.querySelectorAll(".thumb.selected").forEach((t) => t.classList.remove("selected"));
  thumb.classList.add("selected");
  const data = thumb.dataset;
  panel.querySelector(".prompt").textContent = data.prompt;
  panel.querySelector(".meta").textContent =
    `${data.strategy} · seed ${data.seed} · CLIP (prompt) ${data.clip} · key ${data.key}` +
    (data.flags ? ` · ${data.flags}` : "");
  panel.querySelector("img").src = thumb.querySelector("img").src;
  panel.hidden = false;
});
