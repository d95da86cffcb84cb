// Microphone -> 16 kHz mono float frames of 512 samples, whatever the context's own rate is.
class Capture16k extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / 16000;  // input samples per output sample
    this.pos = 0;                     // fractional read position into `carry`
    this.carry = new Float32Array(0);
    this.out = new Float32Array(512);
    this.fill = 0;
  }
  process(inputs) {
    const input = inputs[0];
    if (!input || !input[0]) return true;
    const ch = input[0];
    const buf = new Float32Array(this.carry.length + ch.length);
    buf.set(this.carry); buf.set(ch, this.carry.length);
    while (this.pos + 1 < buf.length) {
      const i = Math.floor(this.pos), f = this.pos - i;
      this.out[this.fill++] = buf[i] * (1 - f) + buf[i + 1] * f;  // linear interpolation
      if (this.fill === 512) { this.port.postMessage(this.out.slice(0)); this.fill = 0; }
      this.pos += this.step;
    }
    const keep = Math.floor(this.pos);
    this.carry = buf.slice(keep);
    this.pos -= keep;
    return true;
  }
}
registerProcessor('capture-16k', Capture16k);
