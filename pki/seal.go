package pki

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
)

// SealKeySize is the size of a cluster seal key (AES-256).
const SealKeySize = 32

// sealPrefix versions the sealed format so the algorithm or key can be
// rotated later without guessing what old values are.
const sealPrefix = "v1:"

// NewSealKey returns a random cluster seal key.
func NewSealKey() ([]byte, error) {
	k := make([]byte, SealKeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("new seal key: %w", err)
	}
	return k, nil
}

func sealAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != SealKeySize {
		return nil, fmt.Errorf("seal key is %d bytes, want %d", len(key), SealKeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Seal encrypts plaintext with AES-256-GCM under key and a random nonce,
// returning "v1:" + base64url(nonce || ciphertext || tag), a string safe
// to store in the replicated state.
func Seal(key, plaintext []byte) (string, error) {
	aead, err := sealAEAD(key)
	if err != nil {
		return "", fmt.Errorf("seal: %w", err)
	}
	// Random 96-bit nonces are safe for far more than the number of
	// secrets a cluster will ever seal under one key.
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("seal: %w", err)
	}
	return sealPrefix + base64.RawURLEncoding.EncodeToString(aead.Seal(nonce, nonce, plaintext, nil)), nil
}

// Unseal decrypts a value made by Seal; any modification or a wrong key
// yields an error wrapping ErrUnseal.
func Unseal(key []byte, sealed string) ([]byte, error) {
	aead, err := sealAEAD(key)
	if err != nil {
		return nil, fmt.Errorf("unseal: %w", err)
	}
	rest, ok := strings.CutPrefix(sealed, sealPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: unknown format (want prefix %q)", ErrUnseal, sealPrefix)
	}
	// Strict: a non-canonical encoding is tampering too.
	raw, err := base64.RawURLEncoding.Strict().DecodeString(rest)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnseal, err)
	}
	if len(raw) < aead.NonceSize()+aead.Overhead() {
		return nil, fmt.Errorf("%w: too short", ErrUnseal)
	}
	plain, err := aead.Open(nil, raw[:aead.NonceSize()], raw[aead.NonceSize():], nil)
	if err != nil {
		return nil, ErrUnseal
	}
	return plain, nil
}
