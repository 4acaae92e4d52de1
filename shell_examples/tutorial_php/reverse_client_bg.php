<?php
// A background job, then its status polled by job handle until the server no longer knows
// it (a finished job is forgotten). Usage: php reverse_client_bg.php [SECONDS_BETWEEN_POLLS]
declare(strict_types=1);
require __DIR__ . '/servers.php';

$interval = (float)($argv[1] ?? 3);

$client = new GearmanClient();
$client->addServers(gearman_servers());
$handle = $client->doBackground('reverse', 'this is a test');
if ($client->returnCode() !== GEARMAN_SUCCESS) {
    echo 'Error: ', $client->error(), "\n";
    exit(1);
}

do {
    usleep((int)($interval * 1000000));
    [$known, $running, $numerator, $denominator] = $client->jobStatus($handle);
    printf("Running: %s, numerator: %d, denominator: %d\n",
           $running ? 'true' : 'false', $numerator, $denominator);
} while ($known);
echo "done!\n";
