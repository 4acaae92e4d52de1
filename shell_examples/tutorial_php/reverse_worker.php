<?php
// The reverse worker: for each job, a status and a one-character data packet per character
// of the workload, then the reversed workload as the result.
// Usage: php reverse_worker.php [SECONDS_PER_CHARACTER]   (default 1)
declare(strict_types=1);
require __DIR__ . '/servers.php';

$delay = (float)($argv[1] ?? 1);

function reverse_job(GearmanJob $job): string
{
    global $delay;
    echo 'Received job: ', $job->handle(), "\n";
    $text = $job->workload();
    $size = strlen($text);
    echo "Workload: $text ($size)\n";
    // Progress reports are not needed for a reverse; they show how a long job reports.
    for ($done = 1; $done <= $size; $done++) {
        echo "Sending status: $done/$size complete\n";
        $job->sendStatus($done, $size);
        $job->sendData($text[$done - 1]);
        usleep((int)($delay * 1000000));
    }
    $reversed = strrev($text);
    echo "Result: $reversed\n";
    return $reversed;
}

echo "Starting\n";
$worker = new GearmanWorker();
$worker->addServers(gearman_servers());
$worker->addFunction('reverse', 'reverse_job');

echo "Waiting for job...\n";
while ($worker->work()) {
    if ($worker->returnCode() !== GEARMAN_SUCCESS) {
        echo 'return code: ', $worker->returnCode(), "\n";
        break;
    }
}
