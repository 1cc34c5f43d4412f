// The microphone, cut into units: posts a Float32Array of `unit` samples (at the AudioContext's rate,
// which the page sets to the preset's) every time one is complete. The audio clock paces the session:
// a render quantum with no input (a muted or ended track) counts as silence, so units keep coming.
class Capture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.n = options.processorOptions.unit;
    this.buf = new Float32Array(this.n);
    this.at = 0;
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    const len = ch ? ch.length : 128;
    for (let i = 0; i < len; i++) {
      this.buf[this.at++] = ch ? ch[i] : 0;
      if (this.at === this.n) {
        this.port.postMessage(this.buf, [this.buf.buffer]);
        this.buf = new Float32Array(this.n);
        this.at = 0;
      }
    }
    return true;
  }
}

registerProcessor("capture", Capture);
