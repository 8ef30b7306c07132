// LiveKit transport (docs/client-protocol.md): WebRTC media both ways, events as reliable data packets with
// topic `voxmesh`; the agent's audio is its `voxmesh` track.
import { DisconnectReason, Room, RoomEvent, Track } from 'livekit-client';

const TOPIC = 'voxmesh';
const AGENT = 'voxmesh-agent';
const STATS_EVERY_MS = 1000;

export class LiveKitTransport {
  /** @param {import('./main.js').Handlers} h @param {{url: string, token: string, room: string}} session */
  constructor(h, session, opts = {}) {
    this.name = 'livekit';
    this.h = h;
    this.session = session;
    this.encoder = new TextEncoder();
    this.decoder = new TextDecoder();
    this.room = new Room({
      adaptiveStream: false,
      dynacast: false,
      audioCaptureDefaults: {
        echoCancellation: true,
        noiseSuppression: true,
        autoGainControl: true,
        ...(opts.deviceId ? { deviceId: opts.deviceId } : {}), // the microphone picked on the page
      },
    });
  }

  async start() {
    const room = this.room;
    room.on(RoomEvent.DataReceived, (payload, _participant, _kind, topic) => {
      if (topic !== TOPIC) return;
      try {
        this.h.onEvent(JSON.parse(this.decoder.decode(payload)));
      } catch {
        /* not one JSON object: ignore */
      }
    });
    room.on(RoomEvent.TrackSubscribed, (track, _pub, participant) => {
      if (track.kind !== Track.Kind.Audio || participant.identity !== AGENT) return;
      this.agentTrack = track;
      const el = track.attach();
      el.dataset.testid = 'agent-audio';
      el.hidden = true;
      document.body.appendChild(el);
      this.h.onStatus('agent audio connected');
      this.watchOnsets(track).catch((err) => this.h.onStatus(`no onset watch (${err})`));
    });
    room.on(RoomEvent.TrackUnsubscribed, (track) => track.detach().forEach((el) => el.remove()));
    room.on(RoomEvent.AudioPlaybackStatusChanged, () => {
      if (!room.canPlaybackAudio) this.h.onStatus('audio blocked by the browser: click Start');
    });
    room.on(RoomEvent.Disconnected, (reason) => {
      const name = DisconnectReason[reason] || String(reason);
      // A token refused, or another tab took the identity: connecting again will not help.
      const futile = ['JOIN_FAILURE', 'DUPLICATE_IDENTITY', 'CLIENT_INITIATED'].includes(name);
      this.h.onClose(`LiveKit disconnected (${name})`, !futile);
    });
    // The agent lives in the voxmesh transport: when it leaves, the server went away.
    room.on(RoomEvent.ParticipantDisconnected, (p) => {
      if (p.identity === AGENT) this.h.onClose('the voxmesh agent left the room: the server went away');
    });

    await room.connect(this.session.url, this.session.token, { autoSubscribe: true });
    await room.startAudio(); // we are inside the Start click, so autoplay is allowed
    try {
      const pub = await room.localParticipant.setMicrophoneEnabled(true);
      const mst = pub && pub.track && pub.track.mediaStreamTrack;
      if (mst) this.h.onMicStream(new MediaStream([mst]), null);
    } catch (err) {
      this.h.onStatus(`no microphone (${err.name || err}); text only`);
    }
  }

  send(msg) {
    const data = this.encoder.encode(JSON.stringify(msg));
    return this.room.localParticipant
      .publishData(data, { reliable: true, topic: TOPIC })
      .catch((err) => this.h.onStatus(`send failed: ${err}`));
  }

  /**
   * The page's latency needs the moment the reply becomes audible: an `onset-watch` worklet
   * on the agent's track hears what the <audio> element plays (after WebRTC's jitter buffer).
   * Also shows the jitter buffer's delay over the last second.
   */
  async watchOnsets(track) {
    const ctx = new AudioContext({ latencyHint: 'interactive' });
    this.ctx = ctx;
    await ctx.audioWorklet.addModule(new URL('./worklets.js', import.meta.url).href);
    await ctx.resume();
    const src = ctx.createMediaStreamSource(new MediaStream([track.mediaStreamTrack]));
    const watch = new AudioWorkletNode(ctx, 'onset-watch', { outputChannelCount: [1] });
    watch.port.onmessage = (e) => e.data.type === 'onset' && this.h.onPlaybackStarted();
    src.connect(watch);
    watch.connect(ctx.destination); // silent; keeps the node pulled by the graph
    this.h.onBotAudio(src, ctx);
    let last = null;
    this.statsTimer = setInterval(async () => {
      const s = await this.audioStats();
      if (s && last && s.emitted > last.emitted) {
        this.h.onBuffer(((s.jitterDelay - last.jitterDelay) / (s.emitted - last.emitted)) * 1000);
      }
      last = s;
    }, STATS_EVERY_MS);
  }

  /**
   * Inbound stats of the agent's track (tests read them through window.voxmesh.audioStats):
   * packets, energy (grows only with audible audio), samples, and the jitter buffer's
   * cumulative delay (s) over the samples it emitted (`jitterBufferMs`: their average).
   */
  async audioStats() {
    const receiver = this.agentTrack && this.agentTrack.receiver;
    if (!receiver) return null;
    for (const r of (await receiver.getStats()).values()) {
      if (r.type === 'inbound-rtp') {
        const emitted = r.jitterBufferEmittedCount || 0;
        return {
          packets: r.packetsReceived,
          energy: r.totalAudioEnergy,
          samples: r.totalSamplesReceived,
          jitterDelay: r.jitterBufferDelay || 0,
          emitted,
          jitterBufferMs: emitted ? (r.jitterBufferDelay / emitted) * 1000 : null,
        };
      }
    }
    return null;
  }

  setMicEnabled(on) {
    this.room.localParticipant.setMicrophoneEnabled(on);
  }

  async stop() {
    clearInterval(this.statsTimer);
    if (this.ctx && this.ctx.state !== 'closed') await this.ctx.close().catch(() => {});
    if (this.room.state === 'connected') await this.send({ type: 'bye' });
    await this.room.disconnect();
    document.querySelectorAll('[data-testid="agent-audio"]').forEach((el) => el.remove());
  }
}
