// The miningxr web map: layers from /regions, tiles from /tiles, a click reads /point.
// Plain Leaflet (vendored in the package); no network beyond the server that sent this page.
"use strict";
(async function () {
  const status = document.getElementById("status");
  const info = await (await fetch("/regions")).json();
  const years = info.years;
  const slider = document.getElementById("year");
  const label = document.getElementById("year-label");
  slider.max = String(years.length - 1);
  slider.value = String(years.length - 1);
  const year = () => years[Number(slider.value)];
  label.textContent = year();

  const map = L.map("map", { maxZoom: 18 });
  const b = info.regions.map((r) => r.bbox);
  const bounds = L.latLngBounds(
    [Math.min(...b.map((x) => x[1])), Math.min(...b.map((x) => x[0]))],
    [Math.max(...b.map((x) => x[3])), Math.max(...b.map((x) => x[2]))]
  );
  // each region's own view (a sparse store's regions can lie on two continents)
  const pick = document.getElementById("region");
  const boxOf = (r) => L.latLngBounds([r.bbox[1], r.bbox[0]], [r.bbox[3], r.bbox[2]]);
  for (const r of info.regions) pick.add(new Option(`${r.name} (${r.years[0]}–${r.years[r.years.length - 1]})`, r.name));
  pick.addEventListener("change", () => map.fitBounds(boxOf(info.regions.find((r) => r.name === pick.value))));
  map.fitBounds(boxOf(info.regions[0]));

  const url = (name) => `/tiles/${name}/{z}/{x}/{y}.png` + (info.layers[name].year ? `?year=${year()}` : "");
  const layers = {};
  for (const [name, spec] of Object.entries(info.layers)) {
    if (!spec.available) continue;
    layers[name] = L.tileLayer(url(name), {
      bounds: bounds.pad(0.05), maxZoom: 18, maxNativeZoom: 18, attribution: "miningxr",
      className: `layer-${name}`,
    });
    layers[name].on("tileerror", () => { status.textContent = `some ${name} tiles failed (zoom in?)`; });
  }
  const base = {}, overlays = {};
  for (const name of ["truecolor", "falsecolor"]) if (layers[name]) base[info.layers[name].title] = layers[name];
  for (const name of ["truth", "probability", "onset"]) if (layers[name]) overlays[info.layers[name].title] = layers[name];
  if (layers.truecolor) layers.truecolor.addTo(map);
  if (layers.truth) layers.truth.addTo(map);
  L.control.layers(base, overlays, { collapsed: false }).addTo(map);
  L.control.scale().addTo(map);

  const legend = document.getElementById("legend");
  legend.innerHTML =
    '<div><span class="swatch" style="background:rgb(255,214,0)"></span>truth polygons</div>' +
    '<div>probability 0 → ' + info.threshold + '+</div><div class="ramp" style="background:linear-gradient(to right,#000004,#b73779,#fcfdbf)"></div>' +
    `<div>onset ${years[0]} → ${years[years.length - 1]}</div><div class="ramp" style="background:linear-gradient(to right,#440154,#21918c,#fde725)"></div>`;

  slider.addEventListener("input", () => {
    label.textContent = year();
    for (const [name, layer] of Object.entries(layers)) if (info.layers[name].year) layer.setUrl(url(name));
  });

  map.on("click", async (e) => {
    const q = `/point?lon=${e.latlng.lng.toFixed(6)}&lat=${e.latlng.lat.toFixed(6)}&year=${year()}`;
    const r = await fetch(q);
    const body = await r.json();
    const text = r.ok
      ? `<b>${body.year}</b> ${body.region}<br>probability: ${body.probability === null ? "not predicted" : body.probability.toFixed(3)}` +
        `<br>onset year: ${body.onset_year ?? "never mined"}<br>truth: ${body.mining === null ? "no mask" : body.mining ? "mining" : "other"}`
      : body.detail;
    L.popup().setLatLng(e.latlng).setContent(`<div class="pixel">${text}</div>`).openOn(map);
  });
  window.miningxrMap = { map, layers, info };
  document.body.dataset.ready = "1";
})().catch((err) => { document.getElementById("status").textContent = String(err); });
