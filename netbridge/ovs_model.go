package netbridge

import (
	"github.com/ovn-org/libovsdb/model"
)

// Hand-written libovsdb models for the few Open_vSwitch schema columns
// netbridge reads or writes. Columns not listed are left untouched: updates
// name their fields explicitly.

const (
	ovsDatabase       = "Open_vSwitch"
	ovsTableRoot      = "Open_vSwitch"
	ovsTableBridge    = "Bridge"
	ovsTablePort      = "Port"
	ovsTableInterface = "Interface"
)

// ovsRoot is the single row of the Open_vSwitch table.
type ovsRoot struct {
	UUID        string            `ovsdb:"_uuid"`
	Bridges     []string          `ovsdb:"bridges"`
	NextCfg     int               `ovsdb:"next_cfg"`
	CurCfg      int               `ovsdb:"cur_cfg"`
	ExternalIDs map[string]string `ovsdb:"external_ids"`
}

type ovsBridge struct {
	UUID         string            `ovsdb:"_uuid"`
	Name         string            `ovsdb:"name"`
	Ports        []string          `ovsdb:"ports"`
	DatapathType string            `ovsdb:"datapath_type"`
	RSTPEnable   bool              `ovsdb:"rstp_enable"`
	STPEnable    bool              `ovsdb:"stp_enable"`
	OtherConfig  map[string]string `ovsdb:"other_config"`
	ExternalIDs  map[string]string `ovsdb:"external_ids"`
}

type ovsPort struct {
	UUID        string            `ovsdb:"_uuid"`
	Name        string            `ovsdb:"name"`
	Interfaces  []string          `ovsdb:"interfaces"`
	Tag         *int              `ovsdb:"tag"`
	Trunks      []int             `ovsdb:"trunks"`
	VLANMode    *string           `ovsdb:"vlan_mode"`
	ExternalIDs map[string]string `ovsdb:"external_ids"`
}

type ovsInterface struct {
	UUID        string            `ovsdb:"_uuid"`
	Name        string            `ovsdb:"name"`
	Type        string            `ovsdb:"type"`
	MTURequest  *int              `ovsdb:"mtu_request"`
	Error       *string           `ovsdb:"error"`
	OFPort      *int              `ovsdb:"ofport"`
	ExternalIDs map[string]string `ovsdb:"external_ids"`
}

func ovsDBModel() (model.ClientDBModel, error) {
	return model.NewClientDBModel(ovsDatabase, map[string]model.Model{
		ovsTableRoot:      &ovsRoot{},
		ovsTableBridge:    &ovsBridge{},
		ovsTablePort:      &ovsPort{},
		ovsTableInterface: &ovsInterface{},
	})
}
