package handoff

import (
	"encoding/binary"
	"errors"
	"math"
)

// ErrCorrupt is returned when a batch does not decode: a truncated or
// mistyped field. The handoff is refused, not guessed at.
var ErrCorrupt = errors.New("handoff: corrupt state record")

// Enc appends the fields of a state record to a byte slice: unsigned and
// signed varints, bytes and strings with a varint length. The zero value is
// ready; B is the encoding so far.
type Enc struct{ B []byte }

// Uint appends v.
func (e *Enc) Uint(v uint64) { e.B = binary.AppendUvarint(e.B, v) }

// Int appends v.
func (e *Enc) Int(v int64) { e.B = binary.AppendVarint(e.B, v) }

// Bool appends b.
func (e *Enc) Bool(b bool) {
	if b {
		e.B = append(e.B, 1)
	} else {
		e.B = append(e.B, 0)
	}
}

// Float appends f, bit for bit.
func (e *Enc) Float(f float64) { e.B = binary.LittleEndian.AppendUint64(e.B, math.Float64bits(f)) }

// Bytes appends b with its length.
func (e *Enc) Bytes(b []byte) {
	e.Uint(uint64(len(b)))
	e.B = append(e.B, b...)
}

// String appends s with its length.
func (e *Enc) String(s string) {
	e.Uint(uint64(len(s)))
	e.B = append(e.B, s...)
}

// Dec reads what Enc wrote. The first failure sticks: every later read
// returns zero, and Err reports it, so a decoder reads a whole record and
// checks once.
type Dec struct {
	B   []byte
	err error
}

// Err is the first decoding error, or nil.
func (d *Dec) Err() error { return d.err }

func (d *Dec) fail() { d.err, d.B = ErrCorrupt, nil }

// Uint reads an unsigned varint.
func (d *Dec) Uint() uint64 {
	v, n := binary.Uvarint(d.B)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.B = d.B[n:]
	return v
}

// Int reads a signed varint.
func (d *Dec) Int() int64 {
	v, n := binary.Varint(d.B)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.B = d.B[n:]
	return v
}

// Bool reads a bool.
func (d *Dec) Bool() bool {
	if len(d.B) < 1 || d.B[0] > 1 {
		d.fail()
		return false
	}
	b := d.B[0] == 1
	d.B = d.B[1:]
	return b
}

// Float reads a float64.
func (d *Dec) Float() float64 {
	if len(d.B) < 8 {
		d.fail()
		return 0
	}
	f := math.Float64frombits(binary.LittleEndian.Uint64(d.B))
	d.B = d.B[8:]
	return f
}

// Bytes reads a length-prefixed byte string, pointing into the input.
func (d *Dec) Bytes() []byte {
	n := d.Uint()
	if d.err != nil || n > uint64(len(d.B)) {
		d.fail()
		return nil
	}
	b := d.B[:n:n]
	d.B = d.B[n:]
	return b
}

// String reads a length-prefixed string.
func (d *Dec) String() string { return string(d.Bytes()) }
