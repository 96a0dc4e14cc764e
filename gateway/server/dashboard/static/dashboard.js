// Symbi dashboard: optional auto-refresh of pages marked data-refresh (no inline scripts: CSP).
(function () {
  var main = document.querySelector("main[data-refresh]");
  var box = document.getElementById("autorefresh");
  if (!main || !box) { return; }
  var seconds = parseInt(main.getAttribute("data-refresh"), 10) || 5;
  box.checked = sessionStorage.getItem("symbi-autorefresh") === "1";
  box.addEventListener("change", function () {
    sessionStorage.setItem("symbi-autorefresh", box.checked ? "1" : "0");
  });
  setInterval(function () { if (box.checked) { window.location.reload(); } }, seconds * 1000);
})();
