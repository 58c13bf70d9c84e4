-- A Wireshark/tshark dissector for pbvote.
--
--   tshark -X lua_script:contrib/wireshark/pbvote.lua -r cap.pcap
--   tshark -X lua_script:contrib/wireshark/pbvote.lua -r cap.pcap -Y 'pbvote.msg == "Commit"'
--   wireshark: copy to ~/.local/lib/wireshark/plugins/ (or Help > About > Folders)
--
-- A pbvote frame is a 4-byte big-endian body length, then the body in CBOR (see
-- docs/PROTOCOL.md, "Framing"). Frames are reassembled across TCP segments
-- (dissect_tcp_pdus), each body is handed to Wireshark's own CBOR dissector, and the
-- message's name (the serde variant: `VoteRequest`, `Commit`, ...) goes to the Info
-- column and to the `pbvote.msg` field. The link kind (client, peer, status, admin)
-- comes from the dialer's Hello and is kept per conversation. Connections are found
-- heuristically (a frame whose body starts with a known message name), on any port, and
-- on the ports of the `pbvote.ports` preference (default 7000-7001).

local pbvote = Proto("pbvote", "pbvote primary-backup poll protocol")

local f_len = ProtoField.uint32("pbvote.len", "Body length", base.DEC)
local f_msg = ProtoField.string("pbvote.msg", "Message")
local f_link = ProtoField.string("pbvote.link", "Link kind")
pbvote.fields = { f_len, f_msg, f_link }

pbvote.prefs.ports = Pref.range("TCP ports", "7000-7001", "Ports decoded as pbvote", 65535)

local MAX_FRAME_LEN = 16 * 1024 * 1024
local cbor = Dissector.get("cbor")

-- Every top-level name a frame body can start with, and what a Hello's says of its link.
local hello_links = { Client = "client", Peer = "peer", Status = "status", Remove = "admin" }
local names = {}
for _, n in ipairs({
    -- ClientMsg
    "Votes", "Resend", "Accept", "Reject", "Stale", "LeaseAck", "Leave",
    -- ServerMsg
    "Welcome", "NewView", "Propose", "Lease", "VoteRequest", "Results", "Refused", "Left",
    -- PeerMsg
    "Snapshot", "Install", "InstallAck", "Heartbeat", "Register", "Open", "Forward",
    "Commit", "CommitAck", "JoinRefused", "Fence",
    -- RemoveReply
    "Removed", "NoSuchClient", "AskPrimary", "Recovering",
}) do
    names[n] = true
end

-- The CBOR head at `offset`: major type, argument, head length (nil if cut short).
local function cbor_head(tvb, offset)
    if tvb:len() < offset + 1 then return nil end
    local first = tvb(offset, 1):uint()
    local major, info = bit.rshift(first, 5), bit.band(first, 0x1f)
    if info < 24 then return major, info, 1 end
    local size = ({ [24] = 1, [25] = 2, [26] = 4 })[info]
    if not size or tvb:len() < offset + 1 + size then return nil end
    return major, tvb(offset + 1, size):uint(), 1 + size
end

-- The text string at `offset`, if there is a whole one.
local function cbor_text(tvb, offset)
    local major, len, head = cbor_head(tvb, offset)
    if major ~= 3 or tvb:len() < offset + head + len then return nil end
    return tvb(offset + head, len):string()
end

-- A body's message name, and for a Hello the link it opens. Bodies are serde's
-- externally tagged enums (a one-entry map {name: fields}, or a bare name for a variant
-- without fields), or the StatusReply struct (a map whose first key is "node").
local function message_name(tvb, offset)
    local major, count, head = cbor_head(tvb, offset)
    local name
    if major == 3 then
        name = cbor_text(tvb, offset)
    elseif major == 5 then
        name = cbor_text(tvb, offset + head)
        if name == "node" and count > 1 then return "StatusReply", "status" end
    end
    if not name then return nil end
    if hello_links[name] then return "Hello", hello_links[name] end
    if names[name] then return name, nil end
    return nil
end

-- The link kind per conversation (both directions), from its Hello.
local links = {}
local function conversation_key(pinfo)
    local a = tostring(pinfo.src) .. ":" .. pinfo.src_port
    local b = tostring(pinfo.dst) .. ":" .. pinfo.dst_port
    if a < b then return a .. "-" .. b end
    return b .. "-" .. a
end

local function frame_len(tvb, pinfo, offset)
    return tvb(offset, 4):uint() + 4
end

local function dissect_frame(tvb, pinfo, tree)
    local len = tvb(0, 4):uint()
    local name, link = message_name(tvb, 4)
    local key = conversation_key(pinfo)
    if link then links[key] = link end
    link = links[key]
    name = name or "?"
    local subtree = tree:add(pbvote, tvb(), "pbvote " .. name)
    subtree:add(f_len, tvb(0, 4))
    subtree:add(f_msg, tvb(4, math.min(len, tvb:len() - 4)), name)
    if link then subtree:add(f_link, link):set_generated() end
    pinfo.cols.protocol = "pbvote"
    local info = tostring(pinfo.cols.info)
    if info:find("^pbvote ") then
        pinfo.cols.info:append(", " .. name)
    else
        pinfo.cols.info = "pbvote " .. (link and (link .. " ") or "") .. name
    end
    if len > 0 and cbor then
        cbor:call(tvb(4, len):tvb(), pinfo, subtree)
    end
    return tvb:len()
end

function pbvote.dissector(tvb, pinfo, tree)
    dissect_tcp_pdus(tvb, tree, 4, frame_len, dissect_frame, true)
    return tvb:len()
end

-- A segment that starts a frame: a plausible length and a known first name.
local function heuristic(tvb, pinfo, tree)
    if tvb:len() < 6 then return false end
    local len = tvb(0, 4):uint()
    if len == 0 or len > MAX_FRAME_LEN then return false end
    if not message_name(tvb, 4) then return false end
    pinfo.conversation = pbvote
    pbvote.dissector(tvb, pinfo, tree)
    return true
end
pbvote:register_heuristic("tcp", heuristic)

local registered = nil
function pbvote.prefs_changed()
    local tcp_port = DissectorTable.get("tcp.port")
    if registered then tcp_port:remove(registered, pbvote) end
    registered = pbvote.prefs.ports
    tcp_port:add(registered, pbvote)
end
DissectorTable.get("tcp.port"):add(pbvote.prefs.ports, pbvote)
registered = pbvote.prefs.ports
