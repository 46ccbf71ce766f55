// js-libp2p 3.x uses Promise.withResolvers (ES2024, Node >= 22). Debian's Node is 20: provide it.
// Imported first by peer.mjs, so it runs before any libp2p module is evaluated.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
