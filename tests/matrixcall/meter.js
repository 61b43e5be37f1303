// AudioWorklet processor of the MatrixCall party: posts what reaches its input, mixed down to
// mono, to the page in chunks of `chunk` samples (960 = 20 ms at 48 kHz). The page connects the
// remote CallFeed's stream to it and measures energy and tone from those chunks.

class Meter extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.chunk = options.processorOptions.chunk;
    this.buf = new Float32Array(this.chunk);
    this.fill = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    // No channels: nothing is connected (yet), so nothing is heard.
    if (!channels || channels.length === 0) {
      return true;
    }
    const n = channels[0].length;
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let c = 0; c < channels.length; c++) {
        s += channels[c][i];
      }
      this.buf[this.fill++] = s / channels.length;
      if (this.fill === this.chunk) {
        const out = this.buf;
        this.port.postMessage(out, [out.buffer]);
        this.buf = new Float32Array(this.chunk);
        this.fill = 0;
      }
    }
    return true;
  }
}

registerProcessor('meter', Meter);
