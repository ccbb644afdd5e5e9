'use strict';
// Preload (`node -r /path/to/force_loopback.js server.js ...`) that pins every TCP listen of the
// process to 127.0.0.1, whatever host (or none) the server asks for. kinesalite has no host flag and
// kinesis-local binds 0.0.0.0; with this preload nothing they open is reachable beyond loopback.
//
// net.Server.prototype.listen is shared by http, https, tls and raw net servers, so one patch covers
// them all. Unix-socket paths and already-bound handles/fds are passed through untouched: they are not
// TCP ports on an interface.

const net = require('net');

const LOOPBACK = '127.0.0.1';
const originalListen = net.Server.prototype.listen;

function isPortLike(value) {
  if (typeof value === 'number') return true;
  return typeof value === 'string' && value.trim() !== '' && !Number.isNaN(Number(value));
}

function forceLoopback(args) {
  const first = args[0];

  // listen() / listen(callback): an ephemeral port on every interface -> ephemeral port on loopback.
  if (first === undefined || first === null || typeof first === 'function') {
    return [{ port: 0, host: LOOPBACK }, ...args.filter((a) => typeof a === 'function')];
  }

  // listen(options[, callback])
  if (typeof first === 'object') {
    const isHandle = 'handle' in first || 'fd' in first || '_handle' in first;
    if (isHandle || typeof first.path === 'string') return args; // not a TCP bind we choose
    const options = { ...first, host: LOOPBACK, ipv6Only: false };
    return [options, ...args.slice(1)];
  }

  // listen(port[, host][, backlog][, callback])
  if (isPortLike(first)) {
    const options = { port: Number(first), host: LOOPBACK };
    let rest = args.slice(1);
    if (rest.length > 0 && (typeof rest[0] === 'string' || rest[0] === null || rest[0] === undefined)) {
      rest = rest.slice(1); // drop the requested host
    }
    if (rest.length > 0 && typeof rest[0] === 'number') {
      options.backlog = rest[0];
      rest = rest.slice(1);
    }
    return [options, ...rest.filter((a) => typeof a === 'function')];
  }

  // listen(path[, backlog][, callback]): a unix socket, leave it alone.
  return args;
}

net.Server.prototype.listen = function listenOnLoopback(...args) {
  return originalListen.apply(this, forceLoopback(args));
};
