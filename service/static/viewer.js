// The job viewer of the web page: the CT a job segmented, with each target's mean mask (toggle,
// opacity) and variance map (a heat map), slice scrolling, axial / coronal / sagittal / three-plane
// views and CT window presets. Drawing is NiiVue's (vendored, BSD-2: /static/vendor/niivue/); this
// file only wires the public API's files to it. Every volume comes from this server with the
// page's API key; nothing is fetched from anywhere else.
import { Niivue, SLICE_TYPE, SHOW_RENDER } from "/static/vendor/niivue/niivue-0.69.0.js";

// Window presets as (level, width) in HU.
export const WINDOWS = {
  abdomen: { level: 40, width: 400 },
  liver: { level: 30, width: 150 },
  bone: { level: 400, width: 1800 },
};
export const VIEWS = {
  axial: SLICE_TYPE.AXIAL,
  coronal: SLICE_TYPE.CORONAL,
  sagittal: SLICE_TYPE.SAGITTAL,
  planes: SLICE_TYPE.MULTIPLANAR,
};
// The slice a view scrolls through: the RAS axis of the volume (0 = x, 1 = y, 2 = z).
const VIEW_AXIS = { axial: 2, coronal: 1, sagittal: 0, planes: 2 };
// The preview's colours (model/io/preview.py TARGET_COLOURS), in the job's target order: none is grey
// or on the heat ramp of the variance.
export const TARGET_COLOURS = [
  [0, 255, 0], [0, 255, 255], [255, 0, 255], [0, 128, 255], [128, 0, 255], [0, 255, 128],
  [255, 0, 128], [128, 255, 0], [0, 0, 255], [255, 128, 255], [128, 128, 255], [0, 160, 120],
];
// A mean map is drawn where the probability is at least 0.5 (the mask the label map uses).
const MASK_THRESHOLD = 0.5;
// Variance on the preview's fixed scale: 0.25 is the most a probability can vary; below the floor
// (1 % of it) nothing is drawn, so a confident region shows the CT.
const VARIANCE_MAX = 0.25;
const VARIANCE_FLOOR = 0.0025;

// The variance heat ramp (red, yellow, white, as the preview's), transparent at 0 and more opaque
// as the variance grows, so low variance leaves the CT visible.
const HEAT = { R: [160, 255, 255, 255], G: [0, 0, 255, 255], B: [0, 0, 0, 255], A: [0, 160, 220, 255], I: [0, 85, 170, 255] };

// One colour, transparent at index 0: NiiVue maps values below cal_min there, so only the mask shows.
function solidColormap(rgb) {
  const [r, g, b] = rgb;
  return { R: [0, r, r], G: [0, g, g], B: [0, b, b], A: [0, 255, 255], I: [0, 1, 255] };
}

/** One job's volumes in one canvas. `layers` are {target, kind: "mean"|"variance", index, visible}. */
export class JobViewer {
  constructor(canvas, onSlice) {
    this.canvas = canvas;
    this.onSlice = onSlice || (() => {});
    this.nv = null;
    this.layers = [];
    this.view = "axial";
    this.maskOpacity = 0.5;
    this.varianceOpacity = 0.7;
  }

  async open({ ctUrl, files, targets, headers }) {
    if (!this.nv) {
      this.nv = new Niivue({
        backColor: [0, 0, 0, 1],
        isRadiologicalConvention: true, // patient's right on the left, as the preview and PACS
        multiplanarShowRender: SHOW_RENDER.NEVER,
        show3Dcrosshair: false,
        crosshairColor: [1, 1, 0, 0.5],
        crosshairWidth: 0.5,
        dragAndDropEnabled: false,
        isColorbar: false,
        showLegend: false,
        logLevel: "error",
      });
      await this.nv.attachToCanvas(this.canvas);
      this.nv.addColormap("latentseg-heat", HEAT);
      this.nv.onLocationChange = () => this._reportSlice();
    }
    const byName = new Map(files.map((file) => [file.name, file.url]));
    const volumes = [];
    // The CT. A DICOM job's input is a series, not NIfTI: the first mean map then only gives the grid
    // (drawn transparent), and the masks show on black.
    volumes.push(ctUrl
      ? { url: ctUrl, name: "ct.nii", headers, colormap: "gray", ...this._windowRange("abdomen") }
      : { url: byName.get(targets[0] + "_mean.nii.gz"), name: "grid.nii.gz", headers, colormap: "gray",
          cal_min: 0, cal_max: 1, opacity: 0 });
    this.hasCt = Boolean(ctUrl);
    this.layers = [];
    targets.forEach((target, i) => {
      const colour = TARGET_COLOURS[i % TARGET_COLOURS.length];
      const cmap = "latentseg-" + i;
      this.nv.addColormap(cmap, solidColormap(colour));
      for (const kind of ["mean", "variance"]) {
        const url = byName.get(`${target}_${kind}.nii.gz`);
        if (!url) continue;
        const visible = kind === "mean";
        const layer = { target, kind, colour, index: volumes.length, visible };
        this.layers.push(layer);
        volumes.push(kind === "mean"
          ? { url, name: `${target}_mean.nii.gz`, headers, colormap: cmap, cal_min: MASK_THRESHOLD, cal_max: 1,
              opacity: this.maskOpacity }
          : { url, name: `${target}_variance.nii.gz`, headers, colormap: "latentseg-heat", cal_min: VARIANCE_FLOOR,
              cal_max: VARIANCE_MAX, opacity: 0 });
      }
    });
    await this.nv.loadVolumes(volumes);
    this.setView(this.view);
    this._reportSlice();
    return this.layers;
  }

  _windowRange(name) {
    const { level, width } = WINDOWS[name];
    return { cal_min: level - width / 2, cal_max: level + width / 2 };
  }

  setWindow(name) {
    if (!this.hasCt) return;
    const base = this.nv.volumes[0];
    Object.assign(base, this._windowRange(name));
    this.nv.updateGLVolume();
  }

  setView(view) {
    this.view = view;
    this.nv.setSliceType(VIEWS[view]);
    this._reportSlice();
  }

  setLayerVisible(layer, visible) {
    layer.visible = visible;
    this._applyOpacity(layer);
  }

  setOpacity(kind, opacity) {
    if (kind === "mean") this.maskOpacity = opacity; else this.varianceOpacity = opacity;
    for (const layer of this.layers) if (layer.kind === kind) this._applyOpacity(layer, false);
    this.nv.updateGLVolume();
  }

  _applyOpacity(layer, update = true) {
    const opacity = layer.visible ? (layer.kind === "mean" ? this.maskOpacity : this.varianceOpacity) : 0;
    this.nv.volumes[layer.index].opacity = opacity;
    if (update) this.nv.updateGLVolume();
  }

  /** Slices along the current view's axis: {index, count}. */
  slice() {
    const axis = VIEW_AXIS[this.view];
    const count = this.nv.volumes[0].dimsRAS[axis + 1];
    const vox = this.nv.frac2vox(this.nv.scene.crosshairPos);
    return { index: Math.min(count - 1, Math.max(0, Math.round(vox[axis]))), count };
  }

  setSlice(index) {
    const axis = VIEW_AXIS[this.view];
    const delta = [0, 0, 0];
    delta[axis] = index - this.slice().index;
    if (delta[axis] !== 0) this.nv.moveCrosshairInVox(delta[0], delta[1], delta[2]);
    this._reportSlice();
  }

  _reportSlice() {
    if (this.nv && this.nv.volumes.length > 0) this.onSlice(this.slice());
  }
}
