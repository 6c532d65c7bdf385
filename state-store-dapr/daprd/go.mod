// A daprd with only the state.in-memory and state.redis components, for state-store's tests.
//
// Upstream's cmd/daprd imports cmd/daprd/components, whose untagged file panics and whose
// tagged build pulls ~50 components plus mDNS; this module starts the same runtime with two.
module github.com/state-store/state-store/daprd

go 1.26.6

require (
	github.com/dapr/components-contrib v1.18.4
	github.com/dapr/dapr v1.18.3
	github.com/dapr/kit v0.18.3
)

// Copied from github.com/dapr/dapr v1.18.3's go.mod: a module requiring dapr must repeat them.
replace (
	// this is a fork which addresses a performance issues due to go routines
	dubbo.apache.org/dubbo-go/v3 => dubbo.apache.org/dubbo-go/v3 v3.0.3-0.20230118042253-4f159a2b38f3

	// this is a fork that utilises github.com/iskorotkov/avro/v2
	// TODO: @mikeee remove this once the pr against the base has been merged and released.
	github.com/apache/pulsar-client-go v0.18.0 => github.com/twmb/pulsar-client-go v0.20.1-0.20260624144353-90eefc81f70a

	gopkg.in/couchbaselabs/gocbconnstr.v1 => github.com/couchbaselabs/gocbconnstr v1.0.5
)
replace (
	github.com/chenzhuoyu/iasm => github.com/chenzhuoyu/iasm v0.9.0
	github.com/chzyer/logex => github.com/chzyer/logex v1.2.1
	github.com/gobwas/pool => github.com/gobwas/pool v0.2.1
	github.com/toolkits/concurrent => github.com/niean/gotools v0.0.0-20151221085310-ff3f51fc5c60
)
