// Fun-Audio-Chat web client: microphone -> PCM16 16 kHz over /v1/realtime (turn by turn) or /v1/duplex
// (full duplex: the microphone always streams, the model decides when to speak), replies streamed back.
// No build step. Protocol: docs/serving.md. Test hooks live on window.funaudio.
'use strict';

const $ = (id) => document.getElementById(id);
const fa = window.funaudio = {
  state: 'disconnected', playedSamples: 0, scheduledSamples: 0, sentSamples: 0,
  events: [], latency: {}, session: null,
  mode: 'half',           // 'full' while connected to /v1/duplex
  duplex: null,           // {available, reason} from /healthz: may this server run full duplex?
  action: 'off',          // full duplex: what the model does now (listening, speaking, backchannel, stopped)
  turnSamples: {},        // full duplex: samples scheduled for playback, per assistant turn
  stopped: [],            // full duplex: turns the user cut off (turn.stopped)
  playing: () => playing.length,
};

let ws = null, micCtx = null, micNode = null, micStream = null, outCtx = null;
let talking = false;          // push-to-talk button held
let nextPlay = 0;             // output clock time where the next chunk starts
let pendingAudio = null;      // the response.audio.delta header awaiting its binary frame
let current = null;           // the reply (half duplex: response id) or turn (full duplex: turn number) being played
let turnStart = null;         // when the user's turn ended (commit sent / speech_stopped seen)
let playing = [];             // live AudioBufferSourceNodes

function duplexChosen() { return Boolean(fa.duplex && fa.duplex.available && $('duplex').checked); }

function setState(s, detail) {
  fa.state = s;
  const el = $('state');
  el.textContent = detail ? `${s}: ${detail}` : s;
  el.className = `state ${s}`;
  el.dataset.state = s;
  const on = s === 'connected';
  const busy = on || s === 'connecting';
  const full = busy ? fa.mode === 'full' : duplexChosen();
  // full duplex has no typed turns, no push-to-talk and no VAD, and its settings are fixed once audio flows
  for (const id of ['apply', 'text', 'send']) $(id).disabled = !on || full;
  $('stop').disabled = !on;
  $('ptt').disabled = !on || full || $('turn').value !== 'none';
  for (const id of ['turn', 'mode', 'silence']) $(id).disabled = full;
  $('duplex').disabled = busy || !(fa.duplex && fa.duplex.available);
  $('action').hidden = !full;
  $('connect').textContent = busy ? 'Disconnect' : 'Connect';
}

function setDuplexAvailability(info) {
  fa.duplex = info;
  const note = $('duplex-note');
  if (info && info.available) {
    note.textContent = 'The model listens while it speaks: talk over it to interrupt. Use headphones, or it hears itself.';
    note.classList.remove('unavailable');
  } else {
    $('duplex').checked = false;
    note.textContent = (info && info.reason) || 'Full duplex is not available on this server.';
    note.classList.add('unavailable');
  }
  setState(fa.state);
}

const ACTION_LABELS = { listen: 'listening', start: 'speaking', speak: 'speaking', backchannel: 'backchannel', stop: 'stopped', off: 'off' };

function setAction(action) {
  const label = ACTION_LABELS[action] || action;
  fa.action = label;
  const el = $('action');
  el.dataset.action = label;
  el.textContent = label === 'off' ? '–' : label;
}

function showError(msg) { $('error').textContent = msg || ''; }

function bubble(role, text) {
  const el = document.createElement('div');
  el.className = `msg ${role}`;
  el.textContent = text;
  $('transcript').appendChild(el);
  $('transcript').scrollTop = $('transcript').scrollHeight;
  return el;
}

function duplexSettings() {
  return { voice: $('voice').value || null, instructions: $('instructions').value.trim() || null, actions: true };
}

function sessionSettings() {
  return {
    mode: $('mode').value,
    voice: $('voice').value || null,
    instructions: $('instructions').value.trim() || null,
    turn_detection: $('turn').value,
    silence_ms: Number($('silence').value) || 600,
  };
}

function send(obj) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj)); }

// ------------------------------------------------------------------ playback
function ensureOutput() {
  if (!outCtx) outCtx = new AudioContext();
  if (outCtx.state === 'suspended') outCtx.resume();
}

function playChunk(bytes, sampleRate) {
  if (!current || current.cancelled) return;
  ensureOutput();
  const pcm = new Int16Array(bytes);
  const buf = outCtx.createBuffer(1, pcm.length, sampleRate);
  const ch = buf.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
  const src = outCtx.createBufferSource();
  src.buffer = buf;
  src.connect(outCtx.destination);
  // full duplex audio arrives at the model's pace (200 ms a step): after a gap, start 150 ms late to absorb jitter
  const lead = fa.mode === 'full' ? 0.15 : 0.02;
  const start = nextPlay > outCtx.currentTime + 0.02 ? nextPlay : outCtx.currentTime + lead;
  if (current.firstStart === undefined) current.firstStart = start;
  src.start(start);
  nextPlay = start + buf.duration;
  current.scheduled = (current.scheduled || 0) + buf.duration;
  fa.scheduledSamples += pcm.length;
  if (fa.mode === 'full') fa.turnSamples[current.id] = (fa.turnSamples[current.id] || 0) + pcm.length;
  playing.push(src);
  src.onended = () => {
    playing = playing.filter((s) => s !== src);
    if (!src.stopped) { fa.playedSamples += pcm.length; $('played').textContent = `${fa.playedSamples} samples`; }
  };
}

function stopPlayback() {
  for (const src of playing) { src.stopped = true; try { src.stop(); } catch (e) { /* already ended */ } }
  playing = [];
  nextPlay = 0;
}

function playedMs() {
  if (!current || current.firstStart === undefined || !outCtx) return 0;
  return Math.max(0, Math.min(current.scheduled, outCtx.currentTime - current.firstStart)) * 1000;
}

function bargeIn() {
  if (fa.mode === 'full') {  // the model stops at its next step (turn.stopped); stop the sound now
    send({ type: 'interrupt' });
    if (current && !current.done) current.cancelled = true;
    stopPlayback();
    return;
  }
  if (current && !current.done && !current.cancelled) {
    send({ type: 'response.cancel', audio_played_ms: Math.round(playedMs()) });
    current.cancelled = true;
  }
  stopPlayback();
}

// ------------------------------------------------------------------ microphone
async function startMic() {
  micStream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  try { micCtx = new AudioContext({ sampleRate: 16000 }); } catch (e) { micCtx = new AudioContext(); }
  const source = micCtx.createMediaStreamSource(micStream);
  const onFrame = (f32) => {
    let peak = 0;
    for (let i = 0; i < f32.length; i++) peak = Math.max(peak, Math.abs(f32[i]));
    $('level').style.width = `${Math.min(100, peak * 300)}%`;
    const live = fa.mode === 'full' || $('turn').value === 'server_vad' || talking;  // full duplex: always
    if (!live || !ws || ws.readyState !== WebSocket.OPEN) return;
    const pcm = new Int16Array(f32.length);
    for (let i = 0; i < f32.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(f32[i] * 32767)));
    ws.send(pcm.buffer);
    fa.sentSamples += pcm.length;
  };
  if (micCtx.audioWorklet) {
    await micCtx.audioWorklet.addModule('/static/capture-worklet.js');
    micNode = new AudioWorkletNode(micCtx, 'capture-16k');
    micNode.port.onmessage = (e) => onFrame(e.data);
  } else {  // old browsers: ScriptProcessor (only when the context really runs at 16 kHz)
    micNode = micCtx.createScriptProcessor(512, 1, 1);
    micNode.onaudioprocess = (e) => onFrame(e.inputBuffer.getChannelData(0).slice(0));
  }
  source.connect(micNode);
  const sink = micCtx.createGain(); sink.gain.value = 0;  // keep the graph pulling without echoing the mic
  micNode.connect(sink); sink.connect(micCtx.destination);
}

function stopMic() {
  if (micStream) micStream.getTracks().forEach((t) => t.stop());
  if (micCtx) micCtx.close();
  micStream = micCtx = micNode = null;
}

// ------------------------------------------------------------------ protocol
function onEvent(ev) {
  fa.events.push(ev.type);
  switch (ev.type) {
    case 'session.created': {
      fa.session = ev;
      setState('connected');
      const sel = $('voice');
      for (const v of ev.voices || []) {
        if ([...sel.options].some((o) => o.value === v)) continue;
        const o = document.createElement('option'); o.value = o.textContent = v; sel.appendChild(o);
      }
      if (fa.mode === 'full') {
        $('vad').textContent = 'none: the model decides';
        setAction('listen');
        send({ type: 'session.update', session: duplexSettings() });
      } else {
        $('vad').textContent = ev.vad;
        if (ev.duplex) setDuplexAvailability(ev.duplex);
        send({ type: 'session.update', session: sessionSettings() });
      }
      break;
    }
    case 'session.updated': break;
    case 'input_audio.speech_started':  // the server cancels the reply itself; stop what is still playing
      if (current && !current.done) current.cancelled = true;
      stopPlayback();
      break;
    case 'input_audio.speech_stopped': turnStart = performance.now(); break;
    case 'input_audio.committed': {
      const el = bubble('user', ev.transcript || '…');
      el.dataset.item = ev.item_id;
      break;
    }
    case 'input_audio.transcript': {
      const el = document.querySelector(`[data-item="${ev.item_id}"]`);
      if (el) el.textContent = ev.transcript;
      break;
    }
    case 'response.created':
      stopPlayback();
      current = { id: ev.response_id, el: bubble('assistant', ''), t0: turnStart || performance.now(), text: '' };
      current.el.dataset.response = ev.response_id;
      break;
    case 'response.text.delta':
      if (current && current.id === ev.response_id) {
        if (current.firstText === undefined) { current.firstText = performance.now() - current.t0; $('lat-text').textContent = `${current.firstText.toFixed(0)} ms`; }
        current.text += ev.delta;
        current.el.textContent = current.text.trim();
        $('transcript').scrollTop = $('transcript').scrollHeight;
      }
      break;
    case 'response.audio.delta':
      pendingAudio = ev;
      if (current && current.firstAudio === undefined) { current.firstAudio = performance.now() - current.t0; $('lat-audio').textContent = `${current.firstAudio.toFixed(0)} ms`; }
      break;
    case 'response.done':
      if (current && current.id === ev.response_id) {
        current.el.textContent = ev.text || current.text.trim() || '…';
        current.el.dataset.done = ev.reason;
        current.done = true;
        if (ev.reason === 'cancelled') current.el.classList.add('cancelled');
        fa.latency = { client_first_text_ms: current.firstText, client_first_audio_ms: current.firstAudio, server: ev.latency_ms };
      }
      turnStart = null;
      break;
    // ---- full duplex (/v1/duplex)
    case 'action':
      setAction(ev.action);
      $('step').textContent = `${ev.step}`;
      break;
    case 'turn.started':
      current = { id: ev.turn, el: bubble(ev.kind === 'backchannel' ? 'assistant backchannel' : 'assistant', ''), text: '' };
      current.el.dataset.turn = ev.turn;
      setAction(ev.kind === 'backchannel' ? 'backchannel' : 'start');
      break;
    case 'turn.text.delta':
      if (current && current.id === ev.turn) {
        current.text += ev.delta;
        current.el.textContent = current.text.trim();
        $('transcript').scrollTop = $('transcript').scrollHeight;
      }
      break;
    case 'turn.audio.delta': pendingAudio = ev; break;
    case 'turn.stopped':  // the user barged in: nothing more of this turn may sound
      if (current && current.id === ev.turn) current.cancelled = true;
      stopPlayback();
      fa.stopped.push(ev.turn);
      setAction('stop');
      break;
    case 'turn.done': {
      const el = document.querySelector(`[data-turn="${ev.turn}"]`);
      if (el) {
        el.textContent = ev.text || el.textContent || '…';
        el.dataset.done = ev.reason;
        if (ev.interrupted) el.classList.add('cancelled');
      }
      if (current && current.id === ev.turn) current.done = true;
      break;
    }
    case 'error': showError(`${ev.error.code}: ${ev.error.message}`); break;
    default: break;
  }
}

async function connect() {
  showError('');
  ensureOutput();
  fa.mode = duplexChosen() ? 'full' : 'half';
  fa.turnSamples = {}; fa.stopped = []; current = null;
  setState('connecting');
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const key = $('apikey').value.trim();
  const path = fa.mode === 'full' ? '/v1/duplex' : '/v1/realtime';
  ws = new WebSocket(`${proto}//${location.host}${path}${key ? `?api_key=${encodeURIComponent(key)}` : ''}`);
  ws.binaryType = 'arraybuffer';
  ws.onmessage = (m) => {
    if (typeof m.data === 'string') { onEvent(JSON.parse(m.data)); return; }
    const header = pendingAudio; pendingAudio = null;
    const owner = header && (fa.mode === 'full' ? header.turn : header.response_id);
    if (header && current && owner === current.id) playChunk(m.data, header.sample_rate);
  };
  ws.onclose = (e) => {
    const clean = e.code === 1000 || e.code === 1005;
    setState(clean ? 'disconnected' : 'error', clean ? e.reason : `closed ${e.code}${e.reason ? ` (${e.reason})` : ''}`);
    stopMic(); stopPlayback(); setAction('off');
  };
  ws.onerror = () => setState('error', 'connection failed');
  try { await startMic(); } catch (e) { showError(`microphone unavailable (${e.name}); you can still type`); }
}

function disconnect() { if (ws) ws.close(1000); ws = null; }

// ------------------------------------------------------------------ UI wiring
$('connect').onclick = () => (ws && ws.readyState <= WebSocket.OPEN ? disconnect() : connect());
$('apply').onclick = () => send({ type: 'session.update', session: sessionSettings() });
$('duplex').onchange = () => setState(fa.state);
$('turn').onchange = () => { setState(fa.state); if (fa.state === 'connected') send({ type: 'session.update', session: { turn_detection: $('turn').value } }); };
$('stop').onclick = bargeIn;
$('textform').onsubmit = (e) => {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  bubble('user', text);
  bargeIn();
  turnStart = performance.now();
  send({ type: 'input_text', text });
  $('text').value = '';
};
function pttDown() { if ($('ptt').disabled || talking) return; bargeIn(); talking = true; $('ptt').classList.add('active'); }
function pttUp() {
  if (!talking) return;
  talking = false; $('ptt').classList.remove('active');
  turnStart = performance.now();
  send({ type: 'input_audio.commit' });
}
$('ptt').addEventListener('pointerdown', pttDown);
$('ptt').addEventListener('pointerup', pttUp);
$('ptt').addEventListener('pointerleave', pttUp);
document.addEventListener('keydown', (e) => { if (e.code === 'Space' && e.target === document.body) { e.preventDefault(); pttDown(); } });
document.addEventListener('keyup', (e) => { if (e.code === 'Space' && e.target === document.body) { e.preventDefault(); pttUp(); } });
setState('disconnected');
fetch('/healthz')
  .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
  .then((h) => setDuplexAvailability(h.duplex || { available: false, reason: 'This server does not offer full duplex.' }))
  .catch((e) => setDuplexAvailability({ available: false, reason: `Could not ask the server about full duplex (${e.message}).` }));
