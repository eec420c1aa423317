// The results strip: the submitted guide (with its mask) beside each sample, previews while
// the job runs, then the final images, each downloadable as PNG with its seed in its name.

const DISPLAY_SIDE = 192;  // CSS pixels of the longer side of each result

function scaled(img, width, height) {
  const scale = Math.max(1, Math.floor(DISPLAY_SIDE / Math.max(width, height)));
  img.width = width * scale;
  img.height = height * scale;
  return img;
}

function card(src, width, height, caption, extra) {
  const figure = document.createElement("figure");
  figure.className = "card";
  const img = scaled(new Image(), width, height);
  img.src = src;
  img.alt = caption;
  const figcaption = document.createElement("figcaption");
  const label = document.createElement("span");
  label.textContent = caption;
  figcaption.append(label);
  if (extra) figcaption.append(extra);
  figure.append(img, figcaption);
  return figure;
}

const dataUrl = (image) => `data:${image.mediaType || "image/png"};base64,${image.data}`;

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export class Results {
  constructor(element) {
    this.element = element;
    this.urls = [];
  }

  /** A new job: the guide (PNG data URL, with the mask tinted over it if `tinted`) and empty sample slots. */
  start(guideUrl, width, height, samples, tinted) {
    this.urls.forEach((url) => URL.revokeObjectURL(url));
    this.urls = [];
    this.width = width;
    this.height = height;
    this.element.replaceChildren(card(guideUrl, width, height, tinted ? "guide (mask tinted)" : "guide"));
    this.guideCard = this.element.firstChild;
    this.guideCard.dataset.role = "guide";
    this.slots = [];
    for (let i = 0; i < samples; i++) {
      const slot = card("", width, height, `sample ${i + 1}: waiting`);
      slot.classList.add("preview");
      slot.dataset.role = "sample";
      this.element.append(slot);
      this.slots.push(slot);
    }
  }

  preview(images, progress) {
    images.forEach((image, i) => {
      const slot = this.slots[i];
      if (!slot) return;
      slot.querySelector("img").src = dataUrl(image);
      slot.querySelector("figcaption span").textContent = `sample ${i + 1}: preview at step ${progress.step || "?"}`;
    });
  }

  /** The final images; model names the download files. */
  result(images, model) {
    images.forEach((image, i) => {
      const slot = this.slots[i] || this.element.appendChild(card("", this.width, this.height, ""));
      slot.classList.remove("preview");
      slot.dataset.role = "result";
      slot.dataset.seed = image.seed || "0";
      const img = slot.querySelector("img");
      img.src = dataUrl(image);
      img.dataset.result = String(i);
      slot.querySelector("figcaption span").textContent = `seed ${image.seed || "0"}`;
      const url = URL.createObjectURL(new Blob([base64Bytes(image.data)], { type: image.mediaType || "image/png" }));
      this.urls.push(url);
      const link = document.createElement("a");
      link.href = url;
      link.download = `sdedit-${model}-seed${image.seed || "0"}.png`;
      link.textContent = "Download PNG";
      slot.querySelector("figcaption").append(link);
    });
  }

  /** Marks unfinished slots (cancelled or failed job). */
  abandon(reason) {
    for (const slot of this.slots || []) {
      if (slot.dataset.role === "sample") slot.querySelector("figcaption span").textContent = reason;
    }
  }
}
