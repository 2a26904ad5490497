// Classifies a photo with a tfl model.onnx: RGB pixels 0..255 in [1, size, size, 3], probabilities out, class names
// in the model's metadata ("labels", one per line; when "unknown" names a category, it is the last label, and wins
// for photos of none of the classes). ?model=URL picks the model (default model.onnx beside this page); ?image=URL
// classifies that photo at once, and ?pixels puts the model's input on the status line (how tests drive the page).
const params = new URLSearchParams(location.search);
const status = document.getElementById("status");
ort.env.wasm.wasmPaths = new URL("node_modules/onnxruntime-web/dist/", location.href).href;
ort.env.wasm.numThreads = 1;  // threads need a cross-origin isolated page; one is enough for one photo

async function loadModel(url) {
  const session = await ort.InferenceSession.create(url, { executionProviders: ["wasm"] });
  const { labels, unknown } = await classNames(url);
  const size = session.inputMetadata?.[0]?.shape?.[1] ?? Number(params.get("size"));
  return { session, labels, unknown, size };
}

async function classNames(modelUrl) {
  // ONNX Runtime Web does not expose custom metadata: read it from the file's protobuf, or from labels.txt.
  const bytes = new Uint8Array(await (await fetch(modelUrl)).arrayBuffer());
  const text = metadataValue(bytes, "labels");
  const unknown = metadataValue(bytes, "unknown");
  if (text !== null) return { labels: text.split("\n").filter(Boolean), unknown };
  return { labels: (await (await fetch("labels.txt")).text()).split("\n").filter(Boolean), unknown };
}

function metadataValue(bytes, key) {
  // ModelProto field 14 is metadata_props: StringStringEntryProto {1: key, 2: value}.
  let pos = 0;
  const varint = () => { let v = 0, shift = 0, b; do { b = bytes[pos++]; v += (b & 0x7f) * 2 ** shift; shift += 7; } while (b & 0x80); return v; };
  const decode = (start, end) => new TextDecoder().decode(bytes.subarray(start, end));
  while (pos < bytes.length) {
    const tag = varint(), field = Math.floor(tag / 8), wire = tag & 7;
    if (wire === 0) { varint(); continue; }
    if (wire === 1) { pos += 8; continue; }
    if (wire === 5) { pos += 4; continue; }
    if (wire !== 2) return null;
    const length = varint(), end = pos + length;
    if (field === 14) {
      let entryKey = null, entryValue = null;
      while (pos < end) {
        const t = varint(), n = varint();
        if (t >> 3 === 1) entryKey = decode(pos, pos + n); else if (t >> 3 === 2) entryValue = decode(pos, pos + n);
        pos += n;
      }
      if (entryKey === key) return entryValue;
    }
    pos = end;
  }
  return null;
}

function pixels(image, size) {
  // The photo resized as tfl resizes it in training (tfl/pipeline.py): upright (the browser applies EXIF), a photo at
  // least twice the size averaged in boxes of 2, 4 or 8 pixels, then bilinear with output pixel (i, j) read at
  // (i h / size, j w / size), as MediaPipe Tasks does. A canvas's own scaling puts pixels half a pixel elsewhere.
  let width = image.naturalWidth, height = image.naturalHeight;
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  let source = Float32Array.from(context.getImageData(0, 0, width, height).data);  // RGBA
  const ratio = [8, 4, 2].find((r) => Math.min(width, height) >= r * size) ?? 1;
  if (ratio > 1) [source, width, height] = boxed(source, width, height, ratio);
  const rgb = new Float32Array(size * size * 3);
  for (let i = 0, j = 0; i < size; i++) {
    const y = width === size && height === size ? i : i * height / size;
    const y0 = Math.floor(y), y1 = Math.min(y0 + 1, height - 1), fy = y - y0;
    for (let k = 0; k < size; k++) {
      const x = width === size && height === size ? k : k * width / size;
      const x0 = Math.floor(x), x1 = Math.min(x0 + 1, width - 1), fx = x - x0;
      for (let c = 0; c < 3; c++) {
        const at = (row, col) => source[(row * width + col) * 4 + c];
        const top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * fx;
        const bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * fx;
        rgb[j++] = roundHalfEven(top + (bottom - top) * fy);
      }
    }
  }
  return new ort.Tensor("float32", rgb, [1, size, size, 3]);
}

function boxed(rgba, width, height, ratio) {
  // The mean of each ratio x ratio box (the last row and column of boxes over the pixels they have).
  const w = Math.ceil(width / ratio), h = Math.ceil(height / ratio), out = new Float32Array(w * h * 4);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 4; c++) {
    let sum = 0, count = 0;
    for (let dy = 0; dy < ratio && y * ratio + dy < height; dy++) {
      for (let dx = 0; dx < ratio && x * ratio + dx < width; dx++) {
        sum += rgba[((y * ratio + dy) * width + x * ratio + dx) * 4 + c];
        count++;
      }
    }
    out[(y * w + x) * 4 + c] = sum / count;
  }
  return [out, w, h];
}

function roundHalfEven(value) {  // as TensorFlow's round
  const floor = Math.floor(value), rest = value - floor;
  const rounded = rest > 0.5 || (rest === 0.5 && floor % 2 !== 0) ? floor + 1 : floor;
  return Math.min(255, Math.max(0, rounded));
}

async function classify(model, image) {
  const input = pixels(image, model.size);
  if (params.has("pixels")) {
    const bytes = Uint8Array.from(input.data);
    let text = "";
    for (let i = 0; i < bytes.length; i += 8192) text += String.fromCharCode(...bytes.subarray(i, i + 8192));
    status.dataset.pixels = btoa(text);
  }
  const feeds = { [model.session.inputNames[0]]: input };
  const output = (await model.session.run(feeds))[model.session.outputNames[0]].data;
  const ranked = Array.from(output, (p, i) => [model.labels[i], p]).sort((a, b) => b[1] - a[1]).slice(0, 3);
  const list = document.getElementById("top");
  list.replaceChildren(...ranked.map(([label, p]) => {  // class names are the user's: text, never markup
    const item = document.createElement("li");
    item.dataset.label = label;
    item.textContent = label === model.unknown ? `none of the classes (${label}) ${(100 * p).toFixed(1)}%`
      : `${label} ${(100 * p).toFixed(1)}%`;
    return item;
  }));
  status.textContent = "done";
  status.dataset.top1 = ranked[0][0];
}

function imageFrom(url) {
  return new Promise((resolve, reject) => {
    const image = document.getElementById("preview");
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error(`cannot load ${url}`));
    image.src = url;
  });
}

(async () => {
  try {
    const model = await loadModel(params.get("model") ?? "model.onnx");
    const classes = model.labels.length - (model.unknown ? 1 : 0);
    const unknown = model.unknown ? ` (and "${model.unknown}" for photos of none of them)` : "";
    status.textContent = `Model ready: ${classes} classes${unknown}, ${model.size} px. Pick a photo.`;
    document.getElementById("file").addEventListener("change", async (event) => {
      const file = event.target.files[0];
      if (file) await classify(model, await imageFrom(URL.createObjectURL(file)));
    });
    if (params.get("image")) await classify(model, await imageFrom(params.get("image")));
  } catch (error) {
    status.textContent = `error: ${error.message}`;
  }
})();
