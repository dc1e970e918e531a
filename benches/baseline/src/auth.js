// The platform's token check, done the platform's way with WebCrypto (platform-protocol.md §1):
// Ed25519 JWTs whose key is HKDF-SHA-256(master secret's UTF-8 bytes, salt "handy", info
// "ed25519-key"). Verified tokens are cached per isolate with no expiry, as the platform does.

const enc = new TextEncoder();
// The fixed PKCS#8 wrapping of a raw Ed25519 seed, used only to import it.
const PKCS8_PREFIX = hexBytes('302e020100300506032b657004220420');
const verified = new Map(); // token -> user id
let keyOf = { secret: null, key: null }; // the derived public key, once per isolate

function hexBytes(hex) {
  return new Uint8Array(hex.match(/../g).map((b) => parseInt(b, 16)));
}

function b64urlBytes(s) {
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

function b64urlJson(s) {
  return JSON.parse(new TextDecoder().decode(b64urlBytes(s)));
}

// Seed -> PKCS#8 private key -> JWK (its `x` is the public key) -> verify key.
async function derivePublicKey(secret) {
  const ikm = await crypto.subtle.importKey('raw', enc.encode(secret), 'HKDF', false, ['deriveBits']);
  const seed = new Uint8Array(await crypto.subtle.deriveBits(
    { name: 'HKDF', hash: 'SHA-256', salt: enc.encode('handy'), info: enc.encode('ed25519-key') }, ikm, 256));
  const pkcs8 = new Uint8Array(PKCS8_PREFIX.length + seed.length);
  pkcs8.set(PKCS8_PREFIX);
  pkcs8.set(seed, PKCS8_PREFIX.length);
  const priv = await crypto.subtle.importKey('pkcs8', pkcs8, { name: 'Ed25519' }, true, ['sign']);
  const { x } = await crypto.subtle.exportKey('jwk', priv);
  return crypto.subtle.importKey('jwk', { kty: 'OKP', crv: 'Ed25519', x }, { name: 'Ed25519' }, false, ['verify']);
}

function publicKey(secret) {
  if (keyOf.secret !== secret) keyOf = { secret, key: derivePublicKey(secret) };
  return keyOf.key;
}

// The claims check after the signature: issuer, expiry (rejected when floor(now) >= exp, no
// leeway; a token without exp passes), not-before, and the user id in `user`.
function userOf(payload) {
  const now = Math.floor(Date.now() / 1000);
  if (!payload || typeof payload !== 'object' || payload.iss !== 'handy') return null;
  if (payload.exp !== undefined && (typeof payload.exp !== 'number' || now >= payload.exp)) return null;
  if (payload.nbf !== undefined && (typeof payload.nbf !== 'number' || payload.nbf > now)) return null;
  return typeof payload.user === 'string' && payload.user !== '' ? payload.user : null;
}

async function verifyUncached(token, secret) {
  const parts = token.split('.');
  if (parts.length !== 3) return null;
  let header;
  let payload;
  let signature;
  try {
    header = b64urlJson(parts[0]);
    payload = b64urlJson(parts[1]);
    signature = b64urlBytes(parts[2]);
  } catch (e) {
    return null;
  }
  if ((header.alg !== 'EdDSA' && header.alg !== 'Ed25519') || header.crit !== undefined) return null;
  const ok = await crypto.subtle.verify('Ed25519', await publicKey(secret), signature, enc.encode(`${parts[0]}.${parts[1]}`));
  return ok ? userOf(payload) : null;
}

// The user id of a valid token, else null.
export async function verifyToken(token, secret) {
  const hit = verified.get(token);
  if (hit) return hit;
  const user = await verifyUncached(token, secret);
  if (user) verified.set(token, user);
  return user;
}
