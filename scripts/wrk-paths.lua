-- wrk script for scripts/bench-api.sh: requests the paths listed one per line in the file named
-- by $WRK_PATHS, in turn (each connection thread starts at a different place in the list).
local paths = {}
local next_index = 1

function init(args)
    local file = assert(io.open(assert(os.getenv("WRK_PATHS"), "set WRK_PATHS"), "r"))
    for line in file:lines() do
        if #line > 0 then paths[#paths + 1] = line end
    end
    file:close()
    assert(#paths > 0, "no paths in " .. os.getenv("WRK_PATHS"))
    next_index = math.random(#paths)
end

function request()
    local path = paths[next_index]
    next_index = next_index % #paths + 1
    return wrk.format("GET", path)
end
