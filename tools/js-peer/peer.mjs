// A js-libp2p peer that joins a fedswarm network from outside, for the interop tests.
//
//   node peer.mjs --bootstrap <multiaddr with /p2p/id> [--leave clean|hang] [--timeout-ms N]
//
// It dials the bootstrap (TCP, Noise, yamux; identify and ping), subscribes to the directory
// topic, waits for the bootstrap's mesh summary, announces itself with a heartbeat on the
// presence topic and waits until the summary lists it (gossip both ways), sends
// `/fedswarm/rpc/1` requests (ping, mesh_request), then leaves: `clean` stops the node,
// `hang` stays connected until killed (the test sends SIGKILL: an abrupt departure).
// Every step prints one JSON line on stdout; a failed step prints {"event":"error"} and exits 1.
import './node20.mjs' // must stay the first import
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

// The network's fixed vocabulary (fedswarm.protocol.topics).
const RPC_PROTOCOL = '/fedswarm/rpc/1'
const DIRECTORY_TOPIC = 'fedswarm/directory/1'
const PRESENCE_TOPIC = 'fedswarm/presence/1'
const MAX_FRAME = 1 << 20

function arg (name, fallback) {
  const i = process.argv.indexOf(`--${name}`)
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

function emit (event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, t: Date.now() / 1000, ...fields }) + '\n')
}

function withTimeout (promise, ms, what) {
  let timer
  const timeout = new Promise((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

// One RPC: a 4-byte big-endian length, then JSON {"m": message, "b": null} (fedswarm.p2p.framing).
async function rpc (node, target, message, timeoutMs) {
  const stream = await node.dialProtocol(target, RPC_PROTOCOL, { signal: AbortSignal.timeout(timeoutMs) })
  const body = new TextEncoder().encode(JSON.stringify({ m: message, b: null }))
  const frame = new Uint8Array(4 + body.length)
  new DataView(frame.buffer).setUint32(0, body.length, false)
  frame.set(body, 4)
  stream.send(frame)
  await stream.close() // our side is done; the answer still comes back
  const chunks = []
  let have = 0
  const read = (async () => {
    for await (const chunk of stream) {
      const bytes = chunk.subarray()
      chunks.push(bytes)
      have += bytes.length
      if (have >= 4) {
        const all = concat(chunks, have)
        const size = new DataView(all.buffer, all.byteOffset).getUint32(0, false)
        if (size > MAX_FRAME) throw new Error(`reply frame of ${size} bytes`)
        if (have >= 4 + size) return JSON.parse(new TextDecoder().decode(all.subarray(4, 4 + size)))
      }
    }
    throw new Error(`stream ended after ${have} bytes`)
  })()
  const envelope = await withTimeout(read, timeoutMs, `rpc ${message.type}`)
  return envelope.m
}

function concat (chunks, size) {
  const out = new Uint8Array(size)
  let at = 0
  for (const c of chunks) { out.set(c, at); at += c.length }
  return out
}

async function main () {
  const bootstrap = arg('bootstrap')
  const leave = arg('leave', 'clean')
  const timeoutMs = Number(arg('timeout-ms', '20000'))
  if (!bootstrap) throw new Error('--bootstrap <multiaddr/p2p/id> is required')
  const target = multiaddr(bootstrap)
  const bootstrapId = target.getComponents().find(c => c.name === 'p2p')?.value

  const node = await createLibp2p({
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      ping: ping(),
      // fedswarm signs every message and accepts only signed ones (py-libp2p strict_signing)
      pubsub: gossipsub({ globalSignaturePolicy: 'StrictSign', allowPublishToZeroTopicPeers: true, emitSelf: false })
    }
  })
  const me = node.peerId.toString()
  emit('started', { peer_id: me, addrs: node.getMultiaddrs().map(String) })

  // Every message on the directory topic, with its wire type and (summaries) publish time.
  let summaries = 0
  let listed = null
  let listedResolve
  const listedSeen = new Promise(resolve => { listedResolve = resolve })
  let firstResolve
  const firstSummary = new Promise(resolve => { firstResolve = resolve })
  node.services.pubsub.addEventListener('message', evt => {
    const msg = evt.detail
    let body = null
    try { body = JSON.parse(new TextDecoder().decode(msg.data)) } catch { body = null }
    const from = msg.type === 'signed' ? msg.from.toString() : null
    const fields = { topic: msg.topic, from, type: body?.type ?? null, signed: msg.type === 'signed' }
    if (body?.type === 'mesh_summary') {
      summaries += 1
      fields.at = body.at
      fields.peers = body.peers.map(p => ({ peer_id: p.peer_id, role: p.role }))
      firstResolve(body)
      if (body.peers.some(p => p.peer_id === me)) { listed = body; listedResolve(body) }
    }
    emit('message', fields)
  })
  node.services.pubsub.subscribe(DIRECTORY_TOPIC)
  emit('subscribed', { topic: DIRECTORY_TOPIC })

  await withTimeout(node.dial(target), timeoutMs, 'dial')
  emit('connected', { peer_id: bootstrapId })
  const rtt = await withTimeout(node.services.ping.ping(target), timeoutMs, 'ping')
  // by now identify has run: the protocols the bootstrap announced
  const remote = node.getPeers().find(p => p.toString() === bootstrapId)
  emit('ping', { rtt_ms: rtt, protocols: remote ? (await node.peerStore.get(remote)).protocols : [] })

  const first = await withTimeout(firstSummary, timeoutMs, 'directory summary')
  emit('directory', { peers: first.peers.length, bootstrap_listed: first.peers.some(p => p.peer_id === bootstrapId && p.role === 'bootstrap') })

  // Announce ourselves: the bootstrap hears heartbeats on the presence topic and puts us in
  // its next summary. Repeated until listed (the first may go out before the mesh forms).
  let seq = Date.now()
  const announce = async () => {
    const hb = { type: 'heartbeat', version: 1, peer_id: me, role: 'trainer', addrs: node.getMultiaddrs().map(String).slice(0, 16), topics: [DIRECTORY_TOPIC], seq: seq++ }
    try {
      await node.services.pubsub.publish(PRESENCE_TOPIC, new TextEncoder().encode(JSON.stringify(hb)))
    } catch (err) {
      emit('publish_failed', { error: String(err) })
    }
  }
  await announce()
  const beat = setInterval(announce, 500)
  await withTimeout(listedSeen, timeoutMs, 'listed in the summary')
  emit('listed', { role: listed.peers.find(p => p.peer_id === me).role })

  const nonce = Math.floor(Math.random() * 1e9)
  const pong = await rpc(node, target, { type: 'ping', version: 1, nonce }, timeoutMs)
  emit('rpc', { request: 'ping', reply: pong, ok: pong.type === 'pong' && pong.nonce === nonce })
  const mesh = await rpc(node, target, { type: 'mesh_request', version: 1 }, timeoutMs)
  emit('rpc', { request: 'mesh_request', reply_type: mesh.type, peers: mesh.peers?.length ?? 0, ok: mesh.type === 'mesh_summary' })

  emit('done', { summaries })
  if (leave === 'hang') {
    emit('hanging')
    return // the heartbeat interval keeps the process alive until it is killed
  }
  clearInterval(beat)
  await node.stop()
  emit('stopped')
  process.exit(0)
}

main().catch(err => {
  emit('error', { error: String(err?.stack ?? err) })
  process.exit(1)
})
