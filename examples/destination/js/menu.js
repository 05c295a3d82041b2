document.querySelectorAll("nav button").forEach((b) =>
  b.addEventListener("click", () => b.parentElement.classList.toggle("open")));
