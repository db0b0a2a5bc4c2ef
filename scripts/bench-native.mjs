// The benchmark's "bare limit": request/response over the runtime's own sockets (node:net,
// Deno.listen/connect, Bun.listen/connect) with kosyak's framing (4-byte length, JSON), and no
// cache, no checks, no timeouts. `nativeClient` sends one message per request, the frames of one
// tick written together; `batchingClient` puts the gets of one tick into one message, as kosyak
// does, and the server answers it with one message: that is the limit, since nothing that
// answers gets over these sockets can do less. What kosyak costs on top of it is the price of
// everything it does.
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Length-prefixed JSON frames of `messages`, in one buffer. */
function frames(messages) {
  const bodies = messages.map((message) => encoder.encode(JSON.stringify(message)));
  const out = new Uint8Array(bodies.reduce((n, body) => n + 4 + body.length, 0));
  bodies.reduce((offset, body) => {
    new DataView(out.buffer, offset, 4).setUint32(0, body.length);
    out.set(body, offset + 4);
    return offset + 4 + body.length;
  }, 0);
  return out;
}

/** Calls `onMessage` for every whole frame in the chunks it is fed. */
function frameReader(onMessage) {
  let buffer = new Uint8Array(0);
  return (chunk) => {
    if (buffer.length > 0) {
      const joined = new Uint8Array(buffer.length + chunk.length);
      joined.set(buffer);
      joined.set(chunk, buffer.length);
      chunk = joined;
    }
    let offset = 0;
    const view = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    while (chunk.length - offset >= 4) {
      const length = view.getUint32(offset);
      if (chunk.length - offset - 4 < length) break;
      onMessage(JSON.parse(decoder.decode(chunk.subarray(offset + 4, offset + 4 + length))));
      offset += 4 + length;
    }
    buffer = chunk.slice(offset);
  };
}

/** A writer that sends every message of one tick in one write. */
function batched(write) {
  let queue = [];
  return (message) => {
    if (queue.length === 0) {
      queueMicrotask(() => {
        const messages = queue;
        queue = [];
        write(frames(messages));
      });
    }
    queue.push(message);
  };
}

/** A socket of this runtime as {write(bytes), onData(handler), close()}. */
async function nativeConnection(port) {
  if (globalThis.Deno) {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    return denoConnection(conn);
  }
  if (globalThis.Bun) {
    let handler = () => {};
    const socket = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data: (_, chunk) => handler(chunk), ...bunWrites } });
    return { write: (bytes) => bunWrite(socket, bytes), onData: (h) => (handler = h), close: () => socket.end() };
  }
  const { connect } = await import("node:net");
  const socket = connect({ host: "127.0.0.1", port, noDelay: true });
  await new Promise((resolve) => socket.once("connect", resolve));
  return { write: (bytes) => socket.write(bytes), onData: (h) => socket.on("data", h), close: () => socket.destroy() };
}

function denoConnection(conn) {
  let writing = Promise.resolve();
  return {
    write(bytes) {
      writing = writing.then(async () => {
        while (bytes.length > 0) bytes = bytes.subarray(await conn.write(bytes));
      });
    },
    onData(handler) {
      (async () => {
        const buffer = new Uint8Array(64 * 1024);
        try {
          for (let n = await conn.read(buffer); n !== null; n = await conn.read(buffer)) handler(buffer.slice(0, n));
        } catch {
          // closed
        }
      })();
    },
    close: () => conn.close(),
  };
}

const bunWrites = {
  drain(socket) {
    const pending = socket.data?.pending;
    if (!pending || pending.length === 0) return;
    socket.data.pending = [];
    for (const bytes of pending) bunWrite(socket, bytes);
  },
};

function bunWrite(socket, bytes) {
  socket.data ??= { pending: [] };
  if (socket.data.pending.length > 0) return socket.data.pending.push(bytes);
  const written = socket.write(bytes);
  if (written < bytes.length) socket.data.pending.push(bytes.subarray(Math.max(written, 0)));
}

/** Serves requests with `handle(request) -> answer`; resolves with {port, close}. */
export async function nativeListen(handle) {
  const serve = (connection) => {
    const send = batched((bytes) => connection.write(bytes));
    connection.onData(frameReader((request) => send(handle(request))));
  };
  if (globalThis.Deno) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    (async () => {
      try {
        for await (const conn of listener) serve(denoConnection(conn));
      } catch {
        // closed
      }
    })();
    return { port: listener.addr.port, close: async () => listener.close() };
  }
  if (globalThis.Bun) {
    const server = Bun.listen({
      hostname: "127.0.0.1",
      port: 0,
      socket: {
        open(socket) {
          socket.data = { pending: [], handler: () => {} };
          serve({ write: (bytes) => bunWrite(socket, bytes), onData: (h) => (socket.data.handler = h) });
        },
        data: (socket, chunk) => socket.data.handler(chunk),
        ...bunWrites,
      },
    });
    return { port: server.port, close: async () => server.stop(true) };
  }
  const { createServer } = await import("node:net");
  const server = createServer((socket) => {
    socket.setNoDelay(true);
    serve({ write: (bytes) => socket.write(bytes), onData: (h) => socket.on("data", h) });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { port: server.address().port, close: () => new Promise((resolve) => server.close(resolve)) };
}

/** A client: `request(message)` resolves with the answer to it. */
export async function nativeClient(port) {
  const connection = await nativeConnection(port);
  const pending = new Map();
  let nextRid = 1;
  const send = batched((bytes) => connection.write(bytes));
  connection.onData(frameReader((answer) => {
    pending.get(answer.rid)?.(answer);
    pending.delete(answer.rid);
  }));
  return {
    request(message) {
      const rid = nextRid++;
      const answer = new Promise((resolve) => pending.set(rid, resolve));
      send({ ...message, rid });
      return answer;
    },
    close: () => connection.close(),
  };
}

/**
 * A client that sends the keys asked for in one tick as one `{op: "get", keys, rid}` message and
 * takes one `{values, rid}` answer for them all: `get(key)` resolves with the value.
 */
export async function batchingClient(port) {
  const client = await nativeClient(port);
  let keys = [];
  let waiting = [];
  return {
    get(key) {
      if (keys.length === 0) {
        queueMicrotask(() => {
          const asked = keys;
          const answers = waiting;
          keys = [];
          waiting = [];
          client.request({ op: "get", keys: asked }).then(({ values }) => values.forEach((value, i) => answers[i](value)));
        });
      }
      keys.push(key);
      return new Promise((resolve) => waiting.push(resolve));
    },
    close: () => client.close(),
  };
}
