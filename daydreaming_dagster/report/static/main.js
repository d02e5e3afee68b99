// Draws the page once the other parts are defined.

document.title = DATA.title;
$("title").textContent = DATA.title;
$("subtitle").textContent = `Generated ${DATA.generated} · scores on a ${fmtScale(LO)}–${fmtScale(HI)} scale`;
$("offline-banner").hidden = !DATA.spend.offline;
drawGlance();
drawHeatmap();
drawSummaries();
drawAgreement();
drawMatrix();
wireDetail();
fromHash();
document.documentElement.dataset.ready = String(Math.round(performance.now()));
