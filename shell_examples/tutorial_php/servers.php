<?php
// Shared by the examples: the job servers, from GEARMAN_SERVER (a comma list of host[:port],
// as for the gearman command), default localhost:4730.
declare(strict_types=1);

function gearman_servers(): string
{
    $servers = getenv('GEARMAN_SERVER');
    return ($servers === false || $servers === '') ? 'localhost:4730' : $servers;
}
