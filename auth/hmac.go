package auth

import (
	"crypto/hmac"
	"hash"
	"sync"
	"unsafe"

	"github.com/golang-jwt/jwt/v5"
)

// hmacKey is a Verifier's HMAC secret with a pool of keyed hashes for each
// of HS256, HS384 and HS512. golang-jwt's HMAC method keys a new hash for
// every token it checks: about 480 B of garbage per handshake, in size
// classes that the connections' long-lived objects share, so that the holes
// it leaves between them stay in the heap for as long as they live. A
// pooled hash is Reset to its keyed state instead.
type hmacKey struct {
	secret []byte
	pools  [3]sync.Pool // of *keyedHash, by hmacIndex
}

type keyedHash struct {
	h   hash.Hash
	sum []byte
}

// pooledHMAC is golang-jwt's HMAC method with Verify taking an *hmacKey's
// pooled hash. Any other key is handed to golang-jwt's own Verify, so the
// method stays what jwt.GetSigningMethod returns for everyone in the
// process; Sign is golang-jwt's.
type pooledHMAC struct {
	*jwt.SigningMethodHMAC
	index int
}

func init() {
	for i, m := range []*jwt.SigningMethodHMAC{jwt.SigningMethodHS256, jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
		p := pooledHMAC{m, i}
		jwt.RegisterSigningMethod(m.Alg(), func() jwt.SigningMethod { return p })
	}
}

// Verify implements jwt.SigningMethod.
func (m pooledHMAC) Verify(signingString string, sig []byte, key any) error {
	k, ok := key.(*hmacKey)
	if !ok {
		return m.SigningMethodHMAC.Verify(signingString, sig, key)
	}
	if !m.Hash.Available() {
		return jwt.ErrHashUnavailable
	}
	pool := &k.pools[m.index]
	kh, _ := pool.Get().(*keyedHash)
	if kh == nil {
		kh = &keyedHash{h: hmac.New(m.Hash.New, k.secret)}
	}
	kh.h.Reset()
	// Write neither keeps nor changes its argument.
	kh.h.Write(unsafe.Slice(unsafe.StringData(signingString), len(signingString)))
	kh.sum = kh.h.Sum(kh.sum[:0])
	good := hmac.Equal(sig, kh.sum)
	pool.Put(kh)
	if !good {
		return jwt.ErrSignatureInvalid
	}
	return nil
}
