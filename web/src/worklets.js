// AudioWorklet processors (loaded with audioWorklet.addModule).
//
// mic-capture: context-rate float mic -> s16le chunks of ~20 ms, posted to the page.
// pcm-player:  48 kHz s16le frames -> speakers through a small jitter buffer; obeys `clear`
//              at once; reports how many 48 kHz samples it has actually played.
// onset-watch: (LiveKit path) posts `onset` when its input turns audible after >= 100 ms of
//              quiet: when the agent's reply starts to be heard.

const SRC_RATE = 48000;

class MicCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 50); // 20 ms at the context rate
    this.buf = new Int16Array(this.size);
    this.fill = 0;
    this.enabled = true;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === 'enable') this.enabled = !!e.data.enabled;
    };
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch || !this.enabled) return true;
    for (let i = 0; i < ch.length; i++) {
      const s = Math.max(-1, Math.min(1, ch[i]));
      this.buf[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.fill === this.size) {
        const out = this.buf;
        this.port.postMessage({ type: 'pcm', pcm: out.buffer }, [out.buffer]);
        this.buf = new Int16Array(this.size);
        this.fill = 0;
      }
    }
    return true;
  }
}

class PcmPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.prebuffer = Math.round(((o.prebufferMs ?? 60) * SRC_RATE) / 1000); // jitter buffer
    this.step = SRC_RATE / sampleRate; // source samples per output sample
    this.queue = []; // Float32Array chunks at 48 kHz
    this.head = 0; // fractional read position in queue[0]
    this.queued = 0; // samples in queue (minus head)
    this.playing = false;
    this.played = 0; // 48 kHz samples actually rendered (the `played` ack)
    this.received = 0; // 48 kHz samples received: the server refuses an ack past what it sent
    this.sinceReport = 0;
    this.reportEvery = Math.round((sampleRate * 0.1) / 128); // ~100 ms of render quanta
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === 'frame') {
      const s16 = new Int16Array(msg.pcm);
      const f = new Float32Array(s16.length);
      for (let i = 0; i < s16.length; i++) f[i] = s16[i] / 32768;
      this.queue.push(f);
      this.queued += f.length;
      this.received += f.length;
    } else if (msg.type === 'clear') {
      this.queue = [];
      this.head = 0;
      this.queued = 0;
      this.playing = false;
      this.report(); // tell the page at once what was really heard
    }
  }

  report() {
    this.port.postMessage({
      type: 'played',
      samples: Math.floor(Math.min(this.played, this.received)),
      bufferedMs: (this.queued / SRC_RATE) * 1000,
    });
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && this.queued >= this.prebuffer) {
      this.playing = true;
      this.port.postMessage({ type: 'started' });
    }
    let i = 0;
    if (this.playing) {
      for (; i < out.length; i++) {
        // Linear interpolation; step is 1 when the context runs at 48 kHz (the usual case).
        const cur = this.queue[0];
        if (!cur) break;
        const k = Math.floor(this.head);
        const frac = this.head - k;
        const next = k + 1 < cur.length ? cur[k + 1] : this.queue[1] ? this.queue[1][0] : cur[k];
        out[i] = cur[k] + (next - cur[k]) * frac;
        this.head += this.step;
        this.played += this.step;
        this.queued -= this.step;
        while (this.queue.length && this.head >= this.queue[0].length) {
          this.head -= this.queue[0].length;
          this.queue.shift();
        }
      }
      if (i < out.length) {
        // Ran dry (an utterance ended, or the network lagged): prebuffer again before resuming.
        // At a context rate other than 48 kHz the fractional step overshoots the last sample.
        this.played = Math.min(this.played, this.received);
        this.playing = false;
        this.queued = 0;
        this.head = 0;
      }
    }
    out.fill(0, i);
    if (++this.sinceReport >= this.reportEvery) {
      this.sinceReport = 0;
      this.report();
    }
    return true;
  }
}

const ONSET_LEVEL = 0.01; // peak, about -40 dBFS: decoded silence stays far below
const ONSET_QUIET_S = 0.1;

class OnsetWatch extends AudioWorkletProcessor {
  constructor() {
    super();
    this.quietNeeded = Math.ceil((sampleRate * ONSET_QUIET_S) / 128); // render quanta
    this.quiet = this.quietNeeded;
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    let peak = 0;
    if (ch) for (let i = 0; i < ch.length; i++) peak = Math.max(peak, Math.abs(ch[i]));
    if (peak < ONSET_LEVEL) {
      this.quiet++;
    } else {
      if (this.quiet >= this.quietNeeded) this.port.postMessage({ type: 'onset' });
      this.quiet = 0;
    }
    return true;
  }
}

registerProcessor('onset-watch', OnsetWatch);
registerProcessor('mic-capture', MicCapture);
registerProcessor('pcm-player', PcmPlayer);
