// The two layers, kept at the model's resolution: the guide (RGBA pixels) and the mask (one
// byte per pixel: 1 = regenerate). Brushes stamp hard-edged discs of whole pixels, so what is
// painted is exactly what is sent; the canvas on screen is the same size, scaled up by CSS
// with crisp pixels.

const MASK_TINT = [255, 45, 135];
const MASK_ALPHA = 0.55;

/** Pillow's "L" conversion (ITU-R 601-2), as the service converts colour guides for 1-channel models. */
export function grey(r, g, b) {
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
}

export function parseColour(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

export class Layers {
  constructor(canvas) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.showMask = true;
    this.reset(canvas.width, canvas.height, 3);
  }

  /** A blank (black) guide and an empty mask of width x height; channels 1 = greyscale. */
  reset(width, height, channels) {
    this.width = width;
    this.height = height;
    this.greyscale = channels === 1;
    this.canvas.width = width;
    this.canvas.height = height;
    this.guide = new Uint8ClampedArray(width * height * 4);
    for (let i = 3; i < this.guide.length; i += 4) this.guide[i] = 255;
    this.mask = new Uint8Array(width * height);
    this.render();
  }

  /** Takes a decoded image (ImageBitmap) of the layers' size as the guide; greyscale if the model is. */
  loadGuide(bitmap) {
    const scratch = new OffscreenCanvas(this.width, this.height).getContext("2d");
    scratch.drawImage(bitmap, 0, 0);
    const pixels = scratch.getImageData(0, 0, this.width, this.height).data;
    for (let i = 0; i < pixels.length; i += 4) {
      // transparent pixels are flattened the way the service does it: alpha dropped
      let [r, g, b] = [pixels[i], pixels[i + 1], pixels[i + 2]];
      if (this.greyscale) r = g = b = grey(r, g, b);
      this.guide.set([r, g, b, 255], i);
    }
    this.mask.fill(0);
    this.render();
  }

  clearMask() {
    this.mask.fill(0);
    this.render();
  }

  maskIsEmpty() {
    return !this.mask.some((value) => value);
  }

  /** The colour the brush really paints (its grey on a greyscale model). */
  effectiveColour(rgb) {
    return this.greyscale ? Array(3).fill(grey(...rgb)) : rgb;
  }

  /**
   * Paints a line from (x0, y0) to (x1, y1), in model pixels (fractions allowed), with a disc of
   * `size` pixels: layer "guide" or "mask"; erase: back to black on the guide, to "keep" on the mask.
   */
  stroke(layer, x0, y0, x1, y1, size, rgb, erase) {
    const colour = erase ? [0, 0, 0] : this.effectiveColour(rgb);
    const distance = Math.hypot(x1 - x0, y1 - y0);
    const count = Math.max(1, Math.ceil(distance * 2));
    for (let k = 0; k <= count; k++) {
      const x = x0 + ((x1 - x0) * k) / count;
      const y = y0 + ((y1 - y0) * k) / count;
      this.stamp(layer, x, y, size, colour, erase);
    }
    this.render();
  }

  stamp(layer, x, y, size, colour, erase) {
    const left = Math.round(x - size / 2);
    const top = Math.round(y - size / 2);
    const centre = (size - 1) / 2;
    for (let j = 0; j < size; j++) {
      for (let i = 0; i < size; i++) {
        if ((i - centre) ** 2 + (j - centre) ** 2 > (size / 2) ** 2) continue;
        const px = left + i;
        const py = top + j;
        if (px < 0 || py < 0 || px >= this.width || py >= this.height) continue;
        const index = py * this.width + px;
        if (layer === "mask") this.mask[index] = erase ? 0 : 1;
        else this.guide.set(colour, index * 4);
      }
    }
  }

  /** Guide pixels with the mask as a translucent tint on top. */
  render() {
    const image = new ImageData(new Uint8ClampedArray(this.guide), this.width, this.height);
    if (this.showMask) {
      const pixels = image.data;
      for (let index = 0; index < this.mask.length; index++) {
        if (!this.mask[index]) continue;
        for (let c = 0; c < 3; c++) {
          const at = index * 4 + c;
          pixels[at] = Math.round(pixels[at] * (1 - MASK_ALPHA) + MASK_TINT[c] * MASK_ALPHA);
        }
      }
    }
    this.context.putImageData(image, 0, 0);
  }

  /** The guide as PNG bytes. */
  guidePng() {
    return encodePng(this.guide, this.width, this.height);
  }

  /** The mask as PNG bytes: white = regenerate, black = keep. */
  maskPng() {
    const pixels = new Uint8ClampedArray(this.width * this.height * 4);
    this.mask.forEach((value, index) => pixels.set(value ? [255, 255, 255, 255] : [0, 0, 0, 255], index * 4));
    return encodePng(pixels, this.width, this.height);
  }
}

async function encodePng(pixels, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  canvas.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(pixels), width, height), 0, 0);
  const blob = await canvas.convertToBlob({ type: "image/png" });
  return new Uint8Array(await blob.arrayBuffer());
}

export function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}
