package server

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	protocodec "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/edgewire/edgewire/api"
	"github.com/edgewire/edgewire/coordinator/netmap"
)

// Codec returns the gRPC codec the server's grpc.Server must use
// (grpc.ForceServerCodecV2): protobuf, except that a network map the
// registry already marshalled goes out as those bytes, shared by every
// stream it is sent on, instead of being copied and re-marshalled per
// stream.
func Codec() encoding.CodecV2 {
	return codec{proto: encoding.GetCodecV2(protocodec.Name)}
}

type codec struct{ proto encoding.CodecV2 }

var _ encoding.CodecV2 = codec{}

func (codec) Name() string { return protocodec.Name }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*encodedMap); ok {
		return m.buffers(), nil
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	if _, ok := v.(*encodedMap); ok {
		return fmt.Errorf("codec: cannot decode into %T", v)
	}
	return c.proto.Unmarshal(data, v)
}

// mapField is ServerMessage.map's field number.
var mapField = (&api.ServerMessage{}).ProtoReflect().Descriptor().Fields().ByName("map").Number()

// encodedMap is a ServerMessage carrying one network-map update, sent
// without copying the update's shared bytes. Wire layout: the tag of
// ServerMessage.map (field 2, length-delimited), the varint length of the
// NetworkMap, then the NetworkMap itself as the update's Head (this
// stream's self) followed by its Shared part (protobuf messages
// concatenate).
type encodedMap struct {
	head   []byte // tag, length, Head: this stream's own
	shared []byte // read-only, shared with other streams
}

func newEncodedMap(u *netmap.Update) *encodedMap {
	n := len(u.Head) + len(u.Shared)
	head := make([]byte, 0, protowire.SizeTag(mapField)+protowire.SizeVarint(uint64(n))+len(u.Head))
	head = protowire.AppendTag(head, mapField, protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(n))
	head = append(head, u.Head...)
	return &encodedMap{head: head, shared: u.Shared}
}

// buffers returns the message as gRPC sends it. mem.SliceBuffer's Free is
// a no-op, so gRPC never recycles the shared bytes.
func (m *encodedMap) buffers() mem.BufferSlice {
	if len(m.shared) == 0 {
		return mem.BufferSlice{mem.SliceBuffer(m.head)}
	}
	return mem.BufferSlice{mem.SliceBuffer(m.head), mem.SliceBuffer(m.shared)}
}
