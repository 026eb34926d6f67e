// Sorting and the "needs review" filter, and a check that every picture and bar rendered
// (its result is on <body> as data attributes and in the footer, for people and for tests).
(function () {
  "use strict";
  var table = document.getElementById("summary-table");
  var headers = table.tHead.rows[0].cells;
  function sortBy(column, descending) {
    var numeric = headers[column].dataset.type === "number";
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      var order = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      if (order === 0) { order = parseFloat(a.cells[0].dataset.value) - parseFloat(b.cells[0].dataset.value); }
      return descending ? -order : order;
    });
    rows.forEach(function (row) { table.tBodies[0].appendChild(row); });
    for (var k = 0; k < headers.length; k++) { headers[k].removeAttribute("aria-sort"); }
    headers[column].setAttribute("aria-sort", descending ? "descending" : "ascending");
  }
  Array.prototype.forEach.call(headers, function (header, column) {
    header.querySelector("button").addEventListener("click", function () {
      sortBy(column, header.getAttribute("aria-sort") !== "descending");
    });
  });
  var filter = document.getElementById("review-only");
  filter.addEventListener("change", function () {
    document.body.classList.toggle("review-only", filter.checked);
  });
  window.addEventListener("load", function () {
    var pictures = Array.prototype.slice.call(document.images);
    var shown = pictures.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
    var bars = Array.prototype.slice.call(document.querySelectorAll(".bar"));
    var drawn = bars.filter(function (bar) {
      var box = bar.getBoundingClientRect(), fill = bar.querySelector(".fill").getBoundingClientRect();
      return box.width > 0 && box.height > 0 && fill.height > 0;
    }).length;
    var body = document.body.dataset;
    body.pictures = pictures.length; body.picturesRendered = shown;
    body.bars = bars.length; body.barsRendered = drawn;
    var status = document.getElementById("render-status");
    if (shown === pictures.length && drawn === bars.length) {
      status.textContent = "All " + pictures.length + " pictures and " + bars.length + " bars rendered.";
    } else {
      status.textContent = (pictures.length - shown) + " of " + pictures.length + " pictures and " +
        (bars.length - drawn) + " of " + bars.length + " bars failed to render.";
      status.className = "render-failed";
    }
  });
})();
