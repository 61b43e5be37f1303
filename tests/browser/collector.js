// AudioWorklet processor for the browser peer: hands the decoded remote audio that reaches
// its input to the page, mixed down to mono, in chunks of 20 ms (960 samples at 48 kHz).
// The page connects every subscribed remote audio track to this one node (WebAudio sums
// them), so what it collects is what a listener in the call would hear.

class Collector extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.chunk = options.processorOptions.chunk;
    this.buf = new Float32Array(this.chunk);
    this.fill = 0;
    this.running = true;
    this.port.onmessage = (ev) => {
      if (ev.data === 'stop') {
        this.flush();
        this.running = false;
        this.port.postMessage({ done: true });
      }
    };
  }

  flush() {
    if (this.fill > 0) {
      const out = this.buf.slice(0, this.fill);
      this.port.postMessage({ samples: out }, [out.buffer]);
      this.fill = 0;
    }
  }

  process(inputs) {
    if (!this.running) {
      return false;
    }
    const channels = inputs[0];
    // No channels means no source is connected yet: nothing is being heard.
    if (channels && channels.length > 0) {
      const frames = channels[0].length;
      for (let i = 0; i < frames; i++) {
        let s = 0;
        for (let c = 0; c < channels.length; c++) {
          s += channels[c][i];
        }
        this.buf[this.fill++] = s / channels.length;
        if (this.fill === this.chunk) {
          const out = this.buf;
          this.port.postMessage({ samples: out }, [out.buffer]);
          this.buf = new Float32Array(this.chunk);
          this.fill = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor('collector', Collector);
