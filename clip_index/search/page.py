"""The search page the server shows at `/`: type a query (or pick an image), see thumbnails with
captions and scores. A result's image is the thumbnail kept in the published folder (its
`thumbnail` field) when there is one, else, or when that fails to load, its original URL.
Plain HTML + JS, no build step; `?q=...` runs a query on load. Captions and
URLs are inserted as text/attributes, never as HTML."""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>clip-index search</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
 form { display: flex; gap: .5rem; flex-wrap: wrap; align-items: center; }
 input[type=text] { flex: 1; min-width: 16rem; padding: .4rem; font-size: 1rem; }
 #status { margin: .8rem 0; color: #555; }
 #status.error { color: #b00020; }
 #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr));
            gap: .8rem; }
 .card { border: 1px solid #ddd; border-radius: 6px; padding: .4rem; }
 .card img { width: 100%; height: 160px; object-fit: contain; background: #f4f4f4; }
 .caption { font-size: .85rem; margin: .3rem 0; overflow-wrap: anywhere; }
 .score { font-size: .8rem; color: #666; }
</style>
</head>
<body>
<h1>clip-index search</h1>
<form id="search">
  <input id="q" type="text" name="q" placeholder="a red circle" autofocus>
  <label>results <input id="k" type="number" min="1" max="200" value="20"></label>
  <label><input id="dedup" type="checkbox" checked> de-duplicate</label>
  <input id="file" type="file" accept="image/*" title="search by image">
  <button type="submit">Search</button>
</form>
<div id="status"></div>
<div id="results"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);

function show(message, isError) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "";
}

function card(r) {
  const div = document.createElement("div");
  div.className = "card";
  const img = document.createElement("img");
  img.alt = r.caption || r.uid || "";
  img.loading = "lazy";
  img.addEventListener("load", () => { img.dataset.loaded = "1"; });
  const original = /^https?:\\/\\//i.test(r.url || "") ? r.url : "";
  img.addEventListener("error", () => {
    if (img.dataset.source === "thumbnail" && original) {  // fall back to the original URL
      img.dataset.source = "url";
      img.src = original;
    } else {
      img.dataset.loaded = "0";
    }
  });
  if (r.thumbnail) {
    img.dataset.source = "thumbnail";
    img.src = r.thumbnail;
  } else if (original) {
    img.dataset.source = "url";
    img.src = original;
  }
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.textContent = r.caption || "(no caption)";
  const score = document.createElement("div");
  score.className = "score";
  score.textContent = "score " + Number(r.similarity).toFixed(3) + " · " + (r.uid || r.id);
  div.append(img, caption, score);
  return div;
}

async function search(body) {
  show("searching…", false);
  $("results").replaceChildren();
  const started = performance.now();
  try {
    const resp = await fetch("knn-service", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const data = await resp.json();
    if (!resp.ok) {
      const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
      throw new Error(resp.status + ": " + detail);
    }
    $("results").replaceChildren(...data.filter((r) => r.url !== undefined).map(card));
    show(data.length + " results in " + Math.round(performance.now() - started) + " ms", false);
    document.body.dataset.state = "done";
  } catch (err) {
    show("error " + err.message, true);
    document.body.dataset.state = "error";
  }
}

function common() {
  return {modality: "image", num_images: Number($("k").value) || 20,
          deduplicate: $("dedup").checked};
}

$("search").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = $("file").files[0];
  if (file) {
    const reader = new FileReader();
    reader.onload = () => search({...common(), image: String(reader.result).split(",")[1]});
    reader.readAsDataURL(file);
  } else if ($("q").value.trim()) {
    history.replaceState(null, "", "?q=" + encodeURIComponent($("q").value.trim()));
    search({...common(), text: $("q").value.trim()});
  } else {
    show("type a query or pick an image", true);
  }
});

const initial = new URLSearchParams(location.search).get("q");
if (initial) { $("q").value = initial; search({...common(), text: initial}); }
</script>
</body>
</html>
"""
